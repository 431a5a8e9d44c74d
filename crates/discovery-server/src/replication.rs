//! The seam between the API and whatever keeps other nodes in step.
//!
//! Handlers apply a write locally, then hand it to a [`Replicator`]; a lone
//! node uses [`Standalone`], which has no one to tell.

use std::sync::Arc;

use naming::{BoxFuture, Instance};

use crate::registry::SetRequest;

/// A write to propagate, as applied locally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The stored copy after a register. Shared: one write is queued for
    /// every peer, and a queue hands it to a batch without copying it.
    Register(Arc<Instance>),
    /// The stored copy after a renew.
    Renew(Arc<Instance>),
    /// The copy that was cancelled, with the cancel's time.
    Cancel(Arc<Instance>, i64),
    /// A set, with its effective `set_timestamp`.
    Set(SetRequest),
}

/// Where a write came from (docs/protocol.md#forwarding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client (`replication=false`, `from_zone=false`): same-zone peers
    /// and one node of each other zone.
    Client,
    /// Another zone (`from_zone=true`): same-zone peers only.
    OtherZone,
}

/// Propagates local writes to other nodes.
pub trait Replicator: Send + Sync + 'static {
    /// Queues `op`; resolves when the write may be acknowledged to the
    /// caller (after one same-zone ack or the ack timeout). Renews resolve
    /// at once.
    fn replicate(&self, op: Op, origin: Origin) -> BoxFuture<'static, ()>;
}

/// A node without peers.
#[derive(Debug, Default, Clone, Copy)]
pub struct Standalone;

impl Replicator for Standalone {
    fn replicate(&self, _op: Op, _origin: Origin) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}
