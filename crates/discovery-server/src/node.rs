//! Who a node is and where it is in its life: its identity (the random id
//! that lets it recognise itself behind any address, and the address it
//! advertises), its phase, and the headers that carry them between nodes.

use std::sync::atomic::{AtomicU8, Ordering};

/// Header carrying the answering node's id, so that a node recognises
/// itself behind any address.
pub const NODE_ID_HEADER: &str = "x-discovery-node-id";

/// Header a node of ours puts on every request to a peer: its advertised
/// `host:port`. The peer takes it as a sign of life (a returning node is
/// caught up at once); an unknown or forged value only wakes nothing.
pub const NODE_ADDR_HEADER: &str = "x-discovery-node";

/// The node's lifecycle (see docs/protocol.md#start-up-and-phases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Pulling peers' registries; reads other than `fetch/all` answer `-500`.
    Syncing = 0,
    /// Init-protect: every read answers `-500`.
    Protected = 1,
    /// Normal operation.
    Serving = 2,
    /// Shutting down.
    Draining = 3,
}

/// Who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Random id sent in [`NODE_ID_HEADER`].
    pub id: String,
    /// `host:port` peers and clients use.
    pub advertise: String,
}

/// A [`Phase`] shared by the handlers and the tasks that move it.
#[derive(Debug)]
pub struct PhaseCell(AtomicU8);

impl PhaseCell {
    /// Starts in `phase`.
    pub fn new(phase: Phase) -> Self {
        PhaseCell(AtomicU8::new(phase as u8))
    }

    /// The current phase.
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Syncing,
            1 => Phase::Protected,
            2 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// Moves to another phase.
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }
}
