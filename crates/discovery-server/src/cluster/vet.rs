//! Peer records clients cannot forge.
//!
//! Every node learns its cluster from the `infra.discovery` records in its
//! registry, and every SDK learns its nodes from the same records (through
//! `fetch`, `polls` and `/discovery/nodes`). A record that any process could
//! write would let one process redirect everybody's registrations and
//! polls. So:
//!
//! * a client (no `replication`/`from_zone` marker) cannot write
//!   `infra.discovery` at all: the API answers `-400`;
//! * a marked record whose addresses are this node, or are in the static
//!   `nodes`/`[zones]` lists, or have passed a handshake already, is taken;
//! * any other marked record is held aside (not in the registry, so not
//!   served and not a replication target) until a handshake shows that each
//!   address is a discovery node of our env that holds this very record:
//!   `GET http://<addr>/discovery/fetch?env=<env>&appid=infra.discovery`,
//!   which a Go node answers unmodified. With `[auth]` on, the request
//!   carries the peer token, and a peer-marked write needed it already. A
//!   record that fails the handshake for a lease is dropped;
//! * held and verified peers together are bounded by `limits.max_peers`.

use std::sync::Arc;

use naming::{DISCOVERY_APPID, Instance};
use tracing::{debug, info, warn};

use super::{Cluster, strip_http};
use crate::{
    membership::Vetted,
    node::NODE_ID_HEADER,
    registry::{InstanceKey, RegisterOptions},
    replication::{Op, Origin, Replicator},
};

/// A record waiting for its handshake.
#[derive(Debug)]
pub(super) struct Candidate {
    ins: Instance,
    opts: RegisterOptions,
    origin: Option<Origin>,
    since: tokio::time::Instant,
}

/// Why a handshake did not pass (yet).
enum Handshake {
    /// The address answered as this node.
    IsSelf,
    /// Not (yet) proven; retried until the record's lease runs out.
    NotYet(String),
}

impl Cluster {
    fn trusted(&self, addr: &str) -> bool {
        self.is_self(addr)
            || self.config.nodes.iter().any(|n| n == addr)
            || self.config.zones.values().flatten().any(|n| n == addr)
            || self.verified.lock().contains(addr)
    }

    /// Decides about a peer-marked `infra.discovery` record (`origin`: whom
    /// to pass it on to once stored, as for any replicated write).
    pub fn vet(
        self: &Arc<Self>,
        ins: Instance,
        opts: RegisterOptions,
        origin: Option<Origin>,
    ) -> Vetted {
        let addrs: Vec<&str> = ins.addrs.iter().filter_map(|a| strip_http(a)).collect();
        if addrs.is_empty() {
            return Vetted::Refused(format!(
                "an {DISCOVERY_APPID} record needs an http:// address"
            ));
        }
        for a in &addrs {
            self.heard_from_addr(a);
        }
        if addrs.iter().all(|a| self.trusted(a)) {
            return Vetted::Admit;
        }
        let key = InstanceKey::of(&ins);
        let mut held = self.candidates.lock();
        let known = held.contains_key(&key);
        let peers = held.len() + self.verified.lock().len();
        if !known && peers >= self.config.limits.max_peers {
            return Vetted::Refused(format!(
                "too many discovery peers: limits.max_peers ({})",
                self.config.limits.max_peers
            ));
        }
        let since = held
            .get(&key)
            .map_or_else(tokio::time::Instant::now, |c| c.since);
        held.insert(
            key.clone(),
            Candidate {
                ins,
                opts,
                origin,
                since,
            },
        );
        drop(held);
        if !known {
            info!(hostname = %key.hostname, zone = %key.zone, "new discovery peer record: verifying it");
            tokio::spawn(verify(Arc::clone(self), key));
        }
        Vetted::Held
    }

    /// Records waiting for their handshake.
    pub fn candidates(&self) -> usize {
        self.candidates.lock().len()
    }

    /// Whether `addr` is a discovery node of our env holding `record`.
    async fn handshake(&self, addr: &str, record: &Instance) -> Result<(), Handshake> {
        let url = format!("http://{addr}/discovery/fetch");
        let res = self
            .authorized(self.http.get(url).query(&[
                ("env", record.env.as_str()),
                ("appid", DISCOVERY_APPID),
                ("status", "3"),
            ]))
            .send()
            .await
            .map_err(|e| Handshake::NotYet(e.to_string()))?;
        if res
            .headers()
            .get(NODE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            == Some(self.node.id.as_str())
        {
            return Err(Handshake::IsSelf);
        }
        let answer: serde_json::Value = res
            .json()
            .await
            .map_err(|e| Handshake::NotYet(format!("not a discovery answer: {e}")))?;
        if answer["code"].as_i64() != Some(0) {
            return Err(Handshake::NotYet(format!("code {}", answer["code"])));
        }
        let want = format!("http://{addr}");
        let holds = answer["data"]["instances"]
            .as_object()
            .into_iter()
            .flat_map(|zones| zones.values())
            .filter_map(|list| list.as_array())
            .flatten()
            .any(|i| {
                i["hostname"].as_str() == Some(record.hostname.as_str())
                    && i["addrs"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(want.as_str())))
            });
        if holds {
            Ok(())
        } else {
            Err(Handshake::NotYet(format!(
                "{addr} does not hold the record of {}",
                record.hostname
            )))
        }
    }

    /// Stores a record whose handshake passed, as its write would have been.
    async fn admit(&self, c: Candidate) {
        let out = self.registry.register(c.ins, c.opts, self.clock.now());
        if let (true, Some(Origin::OtherZone)) = (out.applied, c.origin) {
            self.replicate(Op::Register(out.instance.into()), Origin::OtherZone)
                .await;
        }
    }
}

/// Handshakes with every address of a held record until they all pass or
/// the record's lease runs out.
async fn verify(cluster: Arc<Cluster>, key: InstanceKey) {
    let cfg = &cluster.config.cluster;
    let lease = cluster.registry.params().lease;
    let mut attempt = 0u32;
    loop {
        let Some((record, since)) = cluster
            .candidates
            .lock()
            .get(&key)
            .map(|c| (c.ins.clone(), c.since))
        else {
            return;
        };
        let mut why = None;
        for addr in record.addrs.iter().filter_map(|a| strip_http(a)) {
            if cluster.trusted(addr) {
                continue;
            }
            match cluster.handshake(addr, &record).await {
                Ok(()) => {
                    info!(peer = %addr, hostname = %record.hostname, "discovery peer verified");
                    cluster.verified.lock().insert(addr.to_string());
                }
                Err(Handshake::IsSelf) => {
                    cluster.found_self(addr);
                }
                Err(Handshake::NotYet(e)) => {
                    why = Some(format!("{addr}: {e}"));
                    break;
                }
            }
        }
        match why {
            None => {
                let held = cluster.candidates.lock().remove(&key);
                if let Some(c) = held {
                    cluster.admit(c).await;
                }
                cluster.refresh();
                return;
            }
            Some(e) if since.elapsed() >= lease => {
                cluster.candidates.lock().remove(&key);
                warn!(hostname = %key.hostname, "discovery peer record failed its handshake for a lease; dropped: {e}");
                return;
            }
            Some(e) => debug!(hostname = %key.hostname, "handshake not passed yet: {e}"),
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
