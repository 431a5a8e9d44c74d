//! One replication target: an ordered queue and the task that drains it.
//!
//! A same-zone peer is one address; another zone is a list of addresses of
//! which one is used at a time, the next one taking over after a failure.
//! Delivery is at-least-once and in order per target: the head of the queue
//! is retried with jittered exponential backoff until the target answers,
//! so writes survive a peer being down for less than the lease.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::{
    Cluster,
    wire::{self, Answer, Flags},
};
use crate::{
    node::NODE_ID_HEADER,
    registry::InstanceKey,
    replication::Op,
    reply::{BAD_REQUEST, CONFLICT, NOT_FOUND},
};

/// Counts the same-zone peers that acknowledged a write.
pub(crate) type Ack = Arc<watch::Sender<usize>>;

#[derive(Debug)]
pub(crate) struct Item {
    seq: u64,
    pub(crate) op: Op,
    pub(crate) flags: Flags,
    pub(crate) ack: Option<Ack>,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
    next_seq: u64,
    /// Queued renews that a newer renew of the same key may replace.
    renews: HashMap<InstanceKey, u64>,
}

impl Queue {
    fn index_of(&self, seq: u64) -> Option<usize> {
        let head = self.items.front()?.seq;
        let i = usize::try_from(seq.checked_sub(head)?).ok()?;
        (self.items.get(i)?.seq == seq).then_some(i)
    }
}

/// Status of a peer as `/discovery/nodes` shows it.
pub(crate) const UP: u8 = 0;
/// Lost after `cluster.lost_after` consecutive failures.
pub(crate) const LOST: u8 = 1;

/// A replication target.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Address (same zone) or zone name.
    pub(crate) name: String,
    /// Candidate addresses; one for a same-zone peer.
    nodes: Mutex<Vec<String>>,
    current: AtomicUsize,
    /// Whether this is a same-zone peer (its acks count).
    pub(crate) same_zone: bool,
    queue: Mutex<Queue>,
    capacity: usize,
    notify: Notify,
    status: AtomicU8,
    failures: AtomicU32,
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Writes the target refused (`-400`): repaired by anti-entropy.
    pub(crate) rejected: AtomicU64,
    /// Failed attempts (each retry counts).
    pub(crate) failures_total: AtomicU64,
    /// Wall-clock ns of the last successful exchange.
    pub(crate) last_ok: std::sync::atomic::AtomicI64,
    /// Whether the target takes batches (`/discovery/replicate`).
    batch: std::sync::atomic::AtomicBool,
    /// Last repair register per key, for "at most one repair per key, peer
    /// and renew interval"; pruned past [`MAX_REPAIRS`].
    repairs: Mutex<HashMap<InstanceKey, i64>>,
    /// Signalled on any sign of life from the target (a request of its
    /// reached us): cuts a backoff short and probes at once.
    alive: Notify,
    /// Since when every exchange failed; `None` while it answers.
    down_since: Mutex<Option<tokio::time::Instant>>,
    /// Unreachable for `dead_after`: nothing is queued, it is only probed.
    dead: std::sync::atomic::AtomicBool,
    /// Set when the queue was dropped: the target needs a catch-up (our
    /// instances and cancels) when it answers again.
    behind: std::sync::atomic::AtomicBool,
    /// Catch-ups done, and how long the last one took (ms).
    pub(crate) catch_ups: AtomicU64,
    pub(crate) last_catch_up_ms: AtomicU64,
}

/// Most remembered repairs per peer; past it, repairs older than the renew
/// interval are forgotten (a forgotten one only allows one more repair).
const MAX_REPAIRS: usize = 4096;

impl Peer {
    pub(crate) fn new(name: String, nodes: Vec<String>, same_zone: bool, capacity: usize) -> Self {
        Peer {
            name,
            nodes: Mutex::new(nodes),
            current: AtomicUsize::new(0),
            same_zone,
            queue: Mutex::new(Queue::default()),
            capacity,
            notify: Notify::new(),
            // Unknown peers start UP: the first failures mark them Lost.
            status: AtomicU8::new(UP),
            failures: AtomicU32::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
            last_ok: std::sync::atomic::AtomicI64::new(0),
            repairs: Mutex::new(HashMap::new()),
            batch: std::sync::atomic::AtomicBool::new(false),
            alive: Notify::new(),
            down_since: Mutex::new(None),
            dead: std::sync::atomic::AtomicBool::new(false),
            behind: std::sync::atomic::AtomicBool::new(false),
            catch_ups: AtomicU64::new(0),
            last_catch_up_ms: AtomicU64::new(0),
        }
    }

    /// Marks the target as one of ours, which takes batches.
    pub(crate) fn set_batch(&self, on: bool) {
        self.batch.store(on, Ordering::Relaxed);
    }

    /// Whether the target is one of ours (batches, anti-entropy).
    pub(crate) fn takes_batches(&self) -> bool {
        self.batch.load(Ordering::Relaxed)
    }

    pub(crate) fn status(&self) -> u8 {
        self.status.load(Ordering::Relaxed)
    }

    pub(crate) fn is_up(&self) -> bool {
        self.status() == UP
    }

    /// Whether the target is dead (see [`Peer::failed`]).
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// A request from the target reached us: it is back, or still there.
    pub(crate) fn heard_from(&self) {
        self.alive.notify_one();
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.lock().items.len()
    }

    pub(crate) fn has_node(&self, addr: &str) -> bool {
        self.nodes.lock().iter().any(|n| n == addr)
    }

    pub(crate) fn set_nodes(&self, nodes: Vec<String>) {
        let mut n = self.nodes.lock();
        if *n != nodes {
            *n = nodes;
            self.current.store(0, Ordering::Relaxed);
        }
    }

    fn target(&self) -> Option<String> {
        let n = self.nodes.lock();
        if n.is_empty() {
            return None;
        }
        let i = self.current.load(Ordering::Relaxed) % n.len();
        Some(n[i].clone())
    }

    fn rotate(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues a write. A renew replaces a queued renew of the same key; on
    /// overflow renews are dropped first (renew repair and lease expiry
    /// converge them), then the oldest write (counted; marks the peer Lost).
    pub(crate) fn push(&self, op: Op, flags: Flags, ack: Option<Ack>) {
        if self.is_dead() {
            // Caught up as a whole when it answers again.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut q = self.queue.lock();
        let renew_key = match &op {
            Op::Renew(i) => Some(InstanceKey::of(i)),
            _ => None,
        };
        match (&op, &renew_key) {
            (_, Some(k)) => {
                if let Some(i) = q.renews.get(k).copied().and_then(|s| q.index_of(s)) {
                    q.items[i].op = op;
                    return;
                }
            }
            (Op::Register(i) | Op::Cancel(i, _), None) => {
                q.renews.remove(&InstanceKey::of(i));
            }
            _ => {}
        }
        if q.items.len() >= self.capacity {
            if renew_key.is_some() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let victim = q
                .items
                .iter()
                .position(|it| matches!(it.op, Op::Renew(_)))
                .unwrap_or(0);
            let gone = q.items.remove(victim);
            if let Some(Item {
                op: Op::Renew(i), ..
            }) = &gone
            {
                q.renews.remove(&InstanceKey::of(i));
            } else {
                self.mark_lost("queue overflow");
            }
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        if let Some(k) = renew_key {
            q.renews.insert(k, seq);
        }
        q.items.push_back(Item {
            seq,
            op,
            flags,
            ack,
        });
        drop(q);
        self.notify.notify_one();
    }

    /// Puts a write at the head of the queue (renew repair).
    fn push_front(&self, op: Op, flags: Flags) {
        let mut q = self.queue.lock();
        let seq = q
            .items
            .front()
            .map_or(q.next_seq, |h| h.seq.wrapping_sub(1));
        if q.items.is_empty() {
            q.next_seq += 1;
        }
        q.items.push_front(Item {
            seq,
            op,
            flags,
            ack: None,
        });
        drop(q);
        self.notify.notify_one();
    }

    /// Up to `n` items from the head of the queue.
    fn head(&self, n: usize) -> Vec<(u64, Op, Flags)> {
        let q = self.queue.lock();
        q.items
            .iter()
            .take(n)
            .map(|i| (i.seq, i.op.clone(), i.flags))
            .collect()
    }

    fn pop(&self, seq: u64) -> Option<Item> {
        let mut q = self.queue.lock();
        if q.items.front().map(|i| i.seq) != Some(seq) {
            return None;
        }
        let item = q.items.pop_front()?;
        if let Op::Renew(i) = &item.op {
            let k = InstanceKey::of(i);
            if q.renews.get(&k) == Some(&seq) {
                q.renews.remove(&k);
            }
        }
        Some(item)
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        *self.down_since.lock() = None;
        if self.dead.swap(false, Ordering::Relaxed) {
            info!(peer = %self.name, "dead peer answers again");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        self.last_ok.store(now, Ordering::Relaxed);
        if self.status.swap(UP, Ordering::Relaxed) != UP {
            info!(peer = %self.name, "peer up");
        }
    }

    /// Counts a failed exchange. After `dead_after` of nothing but
    /// failures the target is dead: its queue is dropped (counted) and
    /// nothing more is queued until it answers again.
    fn failed(&self, lost_after: u32, dead_after: Duration, why: &str) {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let since = *self.down_since.lock().get_or_insert(now);
        if now.duration_since(since) >= dead_after && !self.dead.swap(true, Ordering::Relaxed) {
            self.behind.store(true, Ordering::Relaxed);
            let dropped = {
                let mut q = self.queue.lock();
                q.renews.clear();
                std::mem::take(&mut q.items).len()
            };
            self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            warn!(
                peer = %self.name, dropped, unreachable_for = ?now.duration_since(since),
                "peer dead: queue dropped; probing it until it answers, then catching it up"
            );
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= lost_after {
            self.mark_lost(why);
        } else {
            debug!(peer = %self.name, failures = n, "peer request failed: {why}");
        }
    }

    fn mark_lost(&self, why: &str) {
        if self.status.swap(LOST, Ordering::Relaxed) != LOST {
            warn!(peer = %self.name, "peer lost: {why}");
        }
    }

    /// Whether a repair of `key` may be sent now.
    fn may_repair(&self, key: &InstanceKey, now: i64, every: i64) -> bool {
        let mut r = self.repairs.lock();
        if r.len() >= MAX_REPAIRS && !r.contains_key(key) {
            r.retain(|_, last| now - *last < every);
            if r.len() >= MAX_REPAIRS {
                r.clear();
            }
        }
        match r.get(key) {
            Some(last) if now - last < every => false,
            _ => {
                r.insert(key.clone(), now);
                true
            }
        }
    }
}

/// Why a request to a peer did not count.
enum Failure {
    /// The address is this node.
    IsSelf,
    /// Connection, timeout, HTTP error, undecodable answer.
    Transport(String),
}

async fn post(
    cluster: &Cluster,
    target: &str,
    path: &str,
    body: String,
) -> Result<Answer, Failure> {
    let req = cluster
        .http()
        .post(cluster.url(target, path))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body);
    exchange(cluster, req).await
}

/// Sends a request to a peer and decodes its JSON answer; an answer from
/// ourselves, an HTTP error or an undecodable body do not count.
async fn exchange<T: serde::de::DeserializeOwned>(
    cluster: &Cluster,
    req: reqwest::RequestBuilder,
) -> Result<T, Failure> {
    let res = cluster
        .send(req)
        .await
        .map_err(|e| Failure::Transport(e.to_string()))?;
    check_self(cluster, &res)?;
    if res.status().as_u16() >= 400 {
        return Err(Failure::Transport(format!("HTTP {}", res.status())));
    }
    let body = cluster.read_answer(res).await.map_err(Failure::Transport)?;
    serde_json::from_slice(&body)
        .map_err(|e| Failure::Transport(format!("undecodable answer: {e}")))
}

/// Most writes one batch carries.
const MAX_BATCH: usize = 256;

/// Sends several writes in one request to a node of ours; the answers come
/// back in order.
async fn post_batch(
    cluster: &Cluster,
    target: &str,
    items: &[(u64, Op, Flags)],
) -> Result<Vec<Answer>, Failure> {
    let ops: Vec<wire::BatchOp> = items
        .iter()
        .map(|(_, op, flags)| {
            let (path, form) = wire::encode(op, *flags);
            wire::BatchOp {
                path: path.to_string(),
                form,
            }
        })
        .collect();
    let req = cluster
        .http()
        .post(cluster.url(target, "/discovery/replicate"))
        .json(&wire::Batch { ops });
    let answer: wire::BatchAnswer = exchange(cluster, req).await?;
    match answer.data {
        Some(list) if answer.code == 0 && list.len() == items.len() => Ok(list),
        _ => Err(Failure::Transport(format!(
            "batch refused: code {}",
            answer.code
        ))),
    }
}

fn check_self(cluster: &Cluster, res: &reqwest::Response) -> Result<(), Failure> {
    if cluster.answered_by_self(res) {
        return Err(Failure::IsSelf);
    }
    Ok(())
}

/// A cheap request that tells whether a peer is alive, and whether it is
/// one of ours: our nodes stamp every answer with their id, Go nodes do
/// not. What a peer takes (batches, anti-entropy) is learned from the
/// peer itself, at an address this node chose, never from a record's
/// metadata, which any client could write.
async fn probe(cluster: &Cluster, target: &str) -> Result<bool, Failure> {
    let res = cluster
        .send(cluster.http().get(cluster.url(target, "/discovery/nodes")))
        .await
        .map_err(|e| Failure::Transport(e.to_string()))?;
    check_self(cluster, &res)?;
    if res.status().as_u16() >= 400 {
        return Err(Failure::Transport(format!("HTTP {}", res.status())));
    }
    Ok(res.headers().contains_key(NODE_ID_HEADER))
}

/// What to do with the head of the queue after an answer.
enum Outcome {
    Done,
    /// The peer will not take it (`-400`): retrying cannot help.
    Rejected(i64),
    Retry(String),
}

/// Drains a peer's queue until the task is aborted.
pub(crate) async fn run(cluster: Arc<Cluster>, peer: Arc<Peer>) {
    let cfg = &cluster.config.cluster;
    let mut backoff = cfg.retry_initial;
    // Probe at once so that a dead peer is not shown UP for long.
    let mut probe_now = true;
    loop {
        let batching = peer.batch.load(Ordering::Relaxed);
        let items = peer.head(if batching { MAX_BATCH } else { 1 });
        if items.is_empty() {
            // Idle: wait for work, probing now and then so that status
            // stays true (a dead target: only probes, every `retry_max`).
            // A dead or lost target is probed as often as a live one, so
            // that a healed partition is noticed within `probe_interval`.
            let wait = if std::mem::take(&mut probe_now) {
                Duration::ZERO
            } else {
                cfg.probe_interval
            };
            let work = tokio::select! {
                () = peer.notify.notified() => true,
                () = peer.alive.notified() => false,
                () = tokio::time::sleep(wait) => false,
            };
            if work {
                continue;
            }
            if let Some(target) = peer.target() {
                match probe(&cluster, &target).await {
                    Ok(ours) => {
                        peer.set_batch(ours && peer.same_zone);
                        peer.succeeded();
                    }
                    Err(Failure::IsSelf) => {
                        cluster.found_self(&target);
                        return;
                    }
                    Err(Failure::Transport(e)) => {
                        peer.failed(cfg.lost_after, cfg.dead_after, &e);
                        if !peer.same_zone {
                            peer.rotate();
                        }
                    }
                }
            }
            if peer.is_up() && peer.behind.load(Ordering::Relaxed) {
                if let Some(target) = peer.target() {
                    catch_up(&cluster, &peer, &target).await;
                }
            }
            continue;
        }
        let Some(target) = peer.target() else {
            tokio::time::sleep(cfg.retry_max).await;
            continue;
        };
        let answers = if items.len() == 1 {
            let (_, op, flags) = &items[0];
            let (path, body) = wire::encode(op, *flags);
            post(&cluster, &target, path, body).await.map(|a| vec![a])
        } else {
            post_batch(&cluster, &target, &items).await
        };
        let answers = match answers {
            Ok(a) => a,
            Err(Failure::IsSelf) => {
                cluster.found_self(&target);
                return;
            }
            Err(Failure::Transport(e)) => {
                if items.len() > 1 && e.starts_with("HTTP 404") {
                    // Not one of ours after all: single writes from now on.
                    peer.set_batch(false);
                }
                retry_later(&peer, cfg, &mut backoff, &e).await;
                continue;
            }
        };
        // Answers in order: pop what is done, stop at the first that must
        // be retried (the order per target is kept). Repairs go to the head
        // once the answered writes are off it.
        let mut repairs = Vec::new();
        let mut retry = None;
        for ((seq, op, flags), answer) in items.iter().zip(answers) {
            match handle_answer(&cluster, &peer, op, *flags, answer, &mut repairs) {
                Outcome::Retry(e) => {
                    retry = Some(e);
                    break;
                }
                outcome => {
                    if let Outcome::Rejected(code) = outcome {
                        // A node that just started may lack the instance a
                        // `set` names; anti-entropy brings it level.
                        peer.rejected.fetch_add(1, Ordering::Relaxed);
                        debug!(peer = %peer.name, code, ?op, "peer rejected a replicated write; anti-entropy repairs it");
                    }
                    peer.sent.fetch_add(1, Ordering::Relaxed);
                    if let Some(item) = peer.pop(*seq) {
                        if let Some(ack) = item.ack.filter(|_| peer.same_zone) {
                            ack.send_modify(|n| *n += 1);
                        }
                    }
                }
            }
        }
        for (op, flags) in repairs.into_iter().rev() {
            peer.push_front(op, flags);
        }
        match retry {
            None => {
                peer.succeeded();
                backoff = cfg.retry_initial;
            }
            Some(e) => retry_later(&peer, cfg, &mut backoff, &e).await,
        }
    }
}

/// Counts a failure and sleeps the jittered backoff, doubling it.
/// Brings a target that was dead level: every instance of ours (peers keep
/// the newer copy by the register rule) and every remembered cancel, sent
/// before the writes queued since it answered. Another zone gets what
/// belongs to our zone only.
async fn catch_up(cluster: &Cluster, peer: &Peer, target: &str) {
    let started = tokio::time::Instant::now();
    let our_zone = &cluster.config.env.zone;
    let flags = if peer.same_zone {
        Flags {
            replication: true,
            from_zone: false,
        }
    } else {
        Flags {
            replication: false,
            from_zone: true,
        }
    };
    let mine = |zone: &str| peer.same_zone || zone == our_zone;
    let mut ops: Vec<(u64, Op, Flags)> = cluster
        .registry
        .all()
        .into_values()
        .flatten()
        .filter(|i| mine(&i.zone))
        .map(|i| (0, Op::Register(i.into()), flags))
        .collect();
    ops.extend(
        cluster
            .registry
            .tombstone_list()
            .into_iter()
            .filter(|(k, _)| mine(&k.zone))
            .map(|(k, at)| {
                let gone = naming::Instance {
                    env: k.env,
                    appid: k.appid,
                    zone: k.zone,
                    hostname: k.hostname,
                    ..Default::default()
                };
                (0, Op::Cancel(gone.into(), at), flags)
            }),
    );
    let batching = peer.batch.load(Ordering::Relaxed);
    for chunk in ops.chunks(if batching { MAX_BATCH } else { 1 }) {
        let sent = if batching {
            post_batch(cluster, target, chunk).await.map(drop)
        } else {
            let (path, body) = wire::encode(&chunk[0].1, chunk[0].2);
            post(cluster, target, path, body).await.map(drop)
        };
        match sent {
            Ok(()) => {}
            Err(Failure::Transport(e)) => {
                debug!(peer = %peer.name, "catch-up interrupted: {e}");
                return;
            }
            Err(Failure::IsSelf) => return,
        }
    }
    peer.behind.store(false, Ordering::Relaxed);
    let took = started.elapsed();
    peer.catch_ups.fetch_add(1, Ordering::Relaxed);
    peer.last_catch_up_ms.store(
        u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    info!(peer = %peer.name, writes = ops.len(), ?took, "caught up a peer that was dead");
}

/// A sign of life from the target cuts the wait short and resets the
/// backoff: a returning peer is caught up at once, not after `retry_max`.
async fn retry_later(peer: &Peer, cfg: &crate::config::Cluster, backoff: &mut Duration, why: &str) {
    peer.failed(cfg.lost_after, cfg.dead_after, why);
    if !peer.same_zone {
        peer.rotate();
    }
    tokio::select! {
        () = tokio::time::sleep(naming::backoff::jitter(*backoff)) => {
            // Never longer than a probe: a healed link is retried soon.
            *backoff = (*backoff * 2).min(cfg.retry_max).min(cfg.probe_interval);
        }
        () = peer.alive.notified() => {
            debug!(peer = %peer.name, "sign of life: retrying now");
            *backoff = cfg.retry_initial;
        }
    }
}

fn handle_answer(
    cluster: &Arc<Cluster>,
    peer: &Peer,
    op: &Op,
    flags: Flags,
    a: Answer,
    repairs: &mut Vec<(Op, Flags)>,
) -> Outcome {
    match (op, a.code) {
        (_, 0) => Outcome::Done,
        (Op::Cancel(..), NOT_FOUND) => Outcome::Done,
        (Op::Renew(i), NOT_FOUND) => {
            // The peer lacks our copy or has an older one: send it ours.
            let key = InstanceKey::of(i);
            let now = cluster.clock.now();
            let every = crate::registry::nanos(cluster.config.registry.params.renew_interval);
            if peer.may_repair(&key, now, every) {
                if let Some(ours) = cluster.registry.get(&key) {
                    debug!(peer = %peer.name, hostname = %key.hostname, "repair: registering our copy");
                    repairs.push((Op::Register(ours.into()), flags));
                }
            }
            Outcome::Done
        }
        (Op::Renew(_), CONFLICT) => {
            // The peer's copy is newer: adopt it and tell the others.
            if let Some(theirs) = a.data {
                cluster.adopt(theirs, &peer.name);
            }
            Outcome::Done
        }
        (_, code @ BAD_REQUEST) => Outcome::Rejected(code),
        (_, code) => Outcome::Retry(format!("code {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use naming::Instance;

    fn ins(h: &str, renew: i64) -> Instance {
        Instance {
            env: "dev".into(),
            appid: "a".into(),
            zone: "z".into(),
            hostname: h.into(),
            renew_timestamp: renew,
            ..Default::default()
        }
    }

    const F: Flags = Flags {
        replication: true,
        from_zone: false,
    };

    fn ops(p: &Peer) -> Vec<String> {
        p.queue
            .lock()
            .items
            .iter()
            .map(|i| match &i.op {
                Op::Register(i) => format!("reg {}", i.hostname),
                Op::Renew(i) => format!("renew {} {}", i.hostname, i.renew_timestamp),
                Op::Cancel(i, _) => format!("cancel {}", i.hostname),
                Op::Set(_) => "set".into(),
            })
            .collect()
    }

    #[test]
    fn a_newer_renew_replaces_a_queued_one_in_place() {
        let p = Peer::new("p".into(), vec!["p".into()], true, 10);
        p.push(Op::Renew(ins("a", 1).into()), F, None);
        p.push(Op::Register(ins("b", 0).into()), F, None);
        p.push(Op::Renew(ins("a", 2).into()), F, None);
        assert_eq!(ops(&p), ["renew a 2", "reg b"]);
        // After a register of the key, a renew goes behind it.
        p.push(Op::Register(ins("a", 0).into()), F, None);
        p.push(Op::Renew(ins("a", 3).into()), F, None);
        assert_eq!(ops(&p), ["renew a 2", "reg b", "reg a", "renew a 3"]);
    }

    #[test]
    fn overflow_drops_renews_first() {
        let p = Peer::new("p".into(), vec!["p".into()], true, 2);
        p.push(Op::Renew(ins("a", 1).into()), F, None);
        p.push(Op::Register(ins("b", 0).into()), F, None);
        p.push(Op::Renew(ins("c", 1).into()), F, None);
        assert_eq!(
            ops(&p),
            ["renew a 1", "reg b"],
            "a renew arriving at a full queue is dropped"
        );
        p.push(Op::Register(ins("d", 0).into()), F, None);
        assert_eq!(ops(&p), ["reg b", "reg d"], "the queued renew made room");
        assert!(p.is_up());
        p.push(Op::Register(ins("e", 0).into()), F, None);
        assert_eq!(ops(&p), ["reg d", "reg e"]);
        assert!(!p.is_up(), "dropping a write marks the peer Lost");
        assert_eq!(p.dropped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn pop_only_removes_the_expected_head() {
        let p = Peer::new("p".into(), vec!["p".into()], true, 10);
        p.push(Op::Register(ins("a", 0).into()), F, None);
        let (seq, _, _) = p.head(1).pop().unwrap();
        p.push_front(Op::Register(ins("repair", 0).into()), F);
        assert!(p.pop(seq).is_none(), "the head changed");
        let (s2, op, _) = p.head(1).pop().unwrap();
        assert!(matches!(op, Op::Register(i) if i.hostname == "repair"));
        assert!(p.pop(s2).is_some());
        assert!(p.pop(seq).is_some());
    }

    #[test]
    fn repairs_are_rate_limited_per_key() {
        let p = Peer::new("p".into(), vec![], true, 10);
        let k = InstanceKey::new("dev", "a", "z", "h");
        assert!(p.may_repair(&k, 100, 50));
        assert!(!p.may_repair(&k, 120, 50));
        assert!(p.may_repair(&k, 151, 50));
    }
}
