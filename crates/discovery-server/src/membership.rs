//! The seam between the API and whatever knows the cluster: the answer of
//! `/discovery/nodes`, the replication targets' state, signs of life from
//! peers, and the vetting of `infra.discovery` records (see
//! docs/cluster.md#peer-records-clients-cannot-forge). A node with peers
//! uses [`crate::cluster::Cluster`]; a router without one uses
//! [`StaticMembers`].

use naming::Instance;

use crate::{registry::RegisterOptions, replication::Origin};

/// One entry of `/discovery/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// `host:port`.
    pub addr: String,
    /// 0 = UP, 1 = Lost.
    pub status: u8,
    /// The node's zone.
    pub zone: String,
}

/// Source of `/discovery/nodes`.
pub trait Members: Send + Sync + 'static {
    /// Local-zone nodes and self, sorted by address.
    fn nodes(&self) -> Vec<NodeStatus>;

    /// Replication targets and their queues.
    fn peers(&self) -> Vec<PeerReport> {
        Vec::new()
    }

    /// A request from the node at `addr` reached us.
    fn heard_from(&self, _addr: &str) {}

    /// Peer records waiting for their handshake.
    fn candidates(&self) -> usize {
        0
    }

    /// Decides about a peer-marked `infra.discovery` record before it is
    /// stored (see [`Vetted`]); without a cluster, stores it.
    fn vet(&self, _ins: Instance, _opts: RegisterOptions, _origin: Option<Origin>) -> Vetted {
        Vetted::Admit
    }
}

/// Replication state of one target, for status pages and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerReport {
    /// Address, or `zone:<name>` for another zone.
    pub name: String,
    /// Whether acks from this target count (same zone).
    pub same_zone: bool,
    /// 0 = UP, 1 = Lost.
    pub status: u8,
    /// Writes waiting.
    pub queued: usize,
    /// Writes delivered.
    pub sent: u64,
    /// Writes dropped on overflow.
    pub dropped: u64,
    /// Failed attempts, retries included.
    pub failures: u64,
    /// Wall-clock ns of the last successful exchange (0 = never).
    pub last_success: i64,
    /// Unreachable for `cluster.dead_after`: nothing queued, only probed.
    pub dead: bool,
    /// Catch-ups after being dead, and how long the last one took.
    pub catch_ups: u64,
    /// Duration of the last catch-up, in milliseconds.
    pub last_catch_up_ms: u64,
}

/// What to do with a peer-marked `infra.discovery` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vetted {
    /// Store it as usual.
    Admit,
    /// Held until its handshake passes; answer the sender as if stored.
    Held,
    /// Refused, with the reason for the `-400`.
    Refused(String),
}

/// `/discovery/nodes` of a node without cluster membership: itself and the
/// static same-zone nodes of its config.
#[derive(Debug)]
pub struct StaticMembers {
    /// This node's advertised address.
    pub own: String,
    /// Its zone.
    pub zone: String,
    /// The static same-zone nodes of its config.
    pub nodes: Vec<String>,
}

impl Members for StaticMembers {
    fn nodes(&self) -> Vec<NodeStatus> {
        let mut addrs: Vec<&String> = self.nodes.iter().chain([&self.own]).collect();
        addrs.sort();
        addrs.dedup();
        addrs
            .into_iter()
            .map(|addr| NodeStatus {
                addr: addr.clone(),
                status: 0,
                zone: self.zone.clone(),
            })
            .collect()
    }
}
