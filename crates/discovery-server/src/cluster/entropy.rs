//! Anti-entropy between our nodes (docs/cluster.md#anti-entropy).
//!
//! Replication pushes each write once per peer; a write that a peer
//! refused, a queue dropped for a dead peer, a batch lost in a partition or
//! a restart between the ack and the apply leave the peer wrong until
//! something overwrites it. So every `cluster.anti_entropy_interval` each
//! node compares its registry with each same-zone peer of ours:
//!
//! 1. `GET /discovery/digest?root=<ours>`: equal roots answer in a few
//!    bytes, which is the idle case;
//! 2. otherwise the peer lists a digest per app, and this node pulls the
//!    apps whose digests differ or that only one side has
//!    (`POST /discovery/apps`): their instances, merged by the register rule
//!    (the newer dirty timestamp wins), and their remembered cancels,
//!    applied to copies not newer than the cancel.
//!
//! Each node pulls from each peer, so a difference is repaired from both
//! sides within one interval. Go nodes do not speak it: only peers whose
//! answers carry our node id header are compared.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
};

use tracing::debug;

use super::Cluster;
use crate::{
    api::entropy::{AppsRequest, AppsState, Digest, MAX_APPS_PER_PULL},
    registry::InstanceKey,
};

/// The envelope of our answers.
#[derive(serde::Deserialize)]
struct Envelope<T> {
    code: i64,
    data: Option<T>,
}

/// Compares with every same-zone peer of ours, forever.
pub(super) async fn run(cluster: Arc<Cluster>) {
    let every = cluster.config.cluster.anti_entropy_interval;
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One round per peer at a time, each on its own: a peer behind a
    // partition (its connect hanging) must not hold up the others.
    let in_flight = Arc::new(parking_lot::Mutex::new(HashSet::new()));
    loop {
        tick.tick().await;
        let targets: Vec<String> = cluster
            .same_zone
            .lock()
            .iter()
            .filter(|(_, s)| s.peer.takes_batches() && !s.peer.is_dead())
            .map(|(addr, _)| addr.clone())
            .collect();
        for target in targets {
            if !in_flight.lock().insert(target.clone()) {
                continue;
            }
            let (cluster, in_flight) = (Arc::clone(&cluster), Arc::clone(&in_flight));
            tokio::spawn(async move {
                match reconcile(&cluster, &target).await {
                    Ok(0) => {}
                    Ok(n) => debug!(peer = %target, repaired = n, "anti-entropy repaired"),
                    Err(e) => debug!(peer = %target, "anti-entropy round failed: {e}"),
                }
                in_flight.lock().remove(&target);
            });
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    cluster: &Cluster,
    req: reqwest::RequestBuilder,
) -> Result<Option<T>, String> {
    let res = cluster.send(req).await.map_err(|e| e.to_string())?;
    if cluster.answered_by_self(&res) {
        return Ok(None);
    }
    if !res.status().is_success() {
        return Err(format!("HTTP {}", res.status()));
    }
    let body = cluster.read_answer(res).await?;
    cluster
        .entropy
        .bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let e: Envelope<T> = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    match (e.code, e.data) {
        (0, Some(d)) => Ok(Some(d)),
        (code, _) => Err(format!("code {code}")),
    }
}

/// One comparison with `target`; returns how many instances and cancels
/// were applied here.
async fn reconcile(cluster: &Cluster, target: &str) -> Result<usize, String> {
    cluster.entropy.rounds.fetch_add(1, Ordering::Relaxed);
    let root = cluster.registry.root_digest();
    let url = cluster.url(target, &format!("/discovery/digest?root={root:016x}"));
    let Some(theirs) = get_json::<Digest>(cluster, cluster.http().get(url)).await? else {
        return Ok(0);
    };
    if theirs.root == format!("{root:016x}") {
        return Ok(0);
    }
    let (_, ours) = cluster.registry.digests();
    let mut ours: HashMap<(String, String), u64> = ours
        .into_iter()
        .map(|(k, d)| ((k.env, k.appid), d))
        .collect();
    let mut want = Vec::new();
    for (env, appid, digest) in theirs.apps {
        match ours.remove(&(env.clone(), appid.clone())) {
            Some(d) if format!("{d:016x}") == digest => {}
            _ => want.push((env, appid)),
        }
    }
    // Apps only we have: the peer may hold their cancels.
    want.extend(ours.into_keys());
    want.sort();
    let mut applied = 0;
    for chunk in want.chunks(MAX_APPS_PER_PULL) {
        let req = cluster
            .http()
            .post(cluster.url(target, "/discovery/apps"))
            .json(&AppsRequest {
                apps: chunk.to_vec(),
            });
        let Some(state) = get_json::<AppsState>(cluster, req).await? else {
            return Ok(applied);
        };
        applied += apply(cluster, state);
    }
    cluster
        .entropy
        .repairs
        .fetch_add(applied as u64, Ordering::Relaxed);
    Ok(applied)
}

/// Takes the peer's newer copies and its cancels of older ones.
///
/// A copy whose lease has run out here is not taken: this node evicted it
/// (or will), and taking it back would undo every eviction that is not
/// simultaneous on all nodes. Equal dirty timestamps with different
/// content are settled the same way on every node: the higher content
/// hash wins.
fn apply(cluster: &Cluster, state: AppsState) -> usize {
    let lease = crate::registry::nanos(cluster.registry.params().lease);
    let mut applied = 0;
    for ins in state.instances {
        let now = cluster.clock.now();
        if now - ins.renew_timestamp > lease || cluster.clock.is_implausible(ins.dirty_timestamp) {
            continue;
        }
        let key = InstanceKey::of(&ins);
        if let Some(ours) = cluster.registry.get(&key) {
            let take = match ours.dirty_timestamp.cmp(&ins.dirty_timestamp) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => {
                    crate::registry::content_hash(&ins) > crate::registry::content_hash(&ours)
                }
            };
            if !take {
                continue;
            }
        }
        cluster.clock.observe(ins.dirty_timestamp);
        if cluster.admit_merge(&ins) && cluster.registry.merge(ins, cluster.clock.now()).applied {
            applied += 1;
        }
    }
    for (env, appid, zone, hostname, at) in state.cancels {
        let key = InstanceKey::new(env, appid, zone, hostname);
        if cluster.registry.apply_cancel(&key, at, cluster.clock.now()) {
            applied += 1;
        }
    }
    applied
}
