//! Who may be a peer: the [`PeerRule`](crate::membership::PeerRule) applied
//! with what this node has learned.

use naming::Instance;

use super::Cluster;
use crate::membership::{Proof, Vetted, canonical};

impl Cluster {
    /// Decides about an `infra.discovery` record before it is stored.
    pub fn vet(&self, ins: &Instance, proof: Proof) -> Vetted {
        // A peer already admitted does not count against the bound again.
        let learned = self.beyond_static.lock();
        let known = ins
            .addrs
            .iter()
            .filter_map(|a| canonical(a))
            .all(|a| self.rule.is_static(&a) || learned.contains(&a));
        let count = if known { 0 } else { learned.len() };
        drop(learned);
        self.rule.vet(ins, proof, count)
    }
}
