//! The registry's vocabulary: keys, settings, and what each operation
//! answers.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use naming::{Instance, Status};

use super::GuardState;

/// Identity of an app: its change counter and its pollers are per (env, appid).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppKey {
    /// Deploy env.
    pub env: String,
    /// Application id.
    pub appid: String,
}

impl AppKey {
    /// Builds a key.
    pub fn new(env: impl Into<String>, appid: impl Into<String>) -> Self {
        AppKey {
            env: env.into(),
            appid: appid.into(),
        }
    }
}

/// Identity of an instance: (env, appid, zone, hostname).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    /// Deploy env.
    pub env: String,
    /// Application id.
    pub appid: String,
    /// Zone.
    pub zone: String,
    /// Hostname.
    pub hostname: String,
}

impl InstanceKey {
    /// Builds a key.
    pub fn new(
        env: impl Into<String>,
        appid: impl Into<String>,
        zone: impl Into<String>,
        hostname: impl Into<String>,
    ) -> Self {
        InstanceKey {
            env: env.into(),
            appid: appid.into(),
            zone: zone.into(),
            hostname: hostname.into(),
        }
    }

    /// The key of an instance.
    pub fn of(ins: &Instance) -> Self {
        Self::new(&ins.env, &ins.appid, &ins.zone, &ins.hostname)
    }

    pub(crate) fn app(&self) -> AppKey {
        AppKey::new(&self.env, &self.appid)
    }
}

/// Lease, eviction and protection settings (docs/protocol.md#lease-and-eviction).
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryParams {
    /// An instance not renewed for this long is evicted (unless protected).
    pub lease: Duration,
    /// Eviction tick.
    pub evict_interval: Duration,
    /// Renew period assumed by the guard.
    pub renew_interval: Duration,
    /// Evicted even when protected.
    pub evict_ceiling: Duration,
    /// Protected when renews fall below this share of the expected ones.
    pub renew_threshold: f64,
    /// Largest share of the registry one tick may evict.
    pub max_evict_fraction: f64,
    /// How often the expected renew count is re-based on the registry size.
    pub expected_reset_interval: Duration,
    /// Whether the guard may suspend eviction.
    pub self_preservation: bool,
    /// How long an app emptied of instances keeps its counter, and a
    /// cancel is remembered.
    pub tombstone_retention: Duration,
    /// Most remembered cancels, and most remembered emptied apps; the
    /// oldest are forgotten first.
    pub max_tombstones: usize,
}

impl Default for RegistryParams {
    fn default() -> Self {
        RegistryParams {
            lease: Duration::from_secs(90),
            evict_interval: Duration::from_secs(60),
            renew_interval: Duration::from_secs(30),
            evict_ceiling: Duration::from_secs(3600),
            renew_threshold: 0.85,
            max_evict_fraction: 0.15,
            expected_reset_interval: Duration::from_secs(15 * 60),
            self_preservation: true,
            tombstone_retention: Duration::from_secs(5 * 60),
            max_tombstones: 100_000,
        }
    }
}

impl RegistryParams {
    /// Renews one instance is expected to send per eviction tick, ≥ 1.
    pub fn renews_per_tick(&self) -> i64 {
        let ratio = self.evict_interval.as_secs_f64() / self.renew_interval.as_secs_f64();
        (ratio.round() as i64).max(1)
    }
}

/// How a register treats the caller's timestamps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisterOptions {
    /// `> 0` overrides the new copy's `dirty_timestamp`.
    pub dirty_timestamp: i64,
    /// `> 0` overrides the new copy's `reg_timestamp` (peer-originated only).
    pub reg_timestamp: i64,
    /// A peer's copy (replication, repair): refused when the instance was
    /// cancelled after that copy was made. A client's register clears the
    /// cancellation instead.
    pub peer: bool,
}

/// What a register did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The copy stored after the register.
    pub instance: Instance,
    /// Whether the key was new.
    pub is_new: bool,
    /// False when the stored copy had a newer `dirty_timestamp` and won.
    pub applied: bool,
}

/// What a renew found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// App or hostname unknown.
    NotFound,
    /// Renewed; the copies agree (or the caller is a client).
    Ok(Instance),
    /// Renewed, but the peer's copy is newer: "send me yours" (`-404`).
    PeerNewer(Instance),
    /// Renewed, but ours is newer: "take mine" (`-409`).
    PeerOlder(Instance),
}

impl PollState {
    /// Whether the app has something to report (`Newer` or `NewerEmpty`).
    pub fn is_newer(&self) -> bool {
        matches!(self, PollState::Newer(_) | PollState::NewerEmpty(_))
    }
}

impl Renewed {
    /// Whether the instance exists.
    pub fn is_found(&self) -> bool {
        !matches!(self, Renewed::NotFound)
    }
}

/// A metadata change of `set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataPatch {
    /// `null`: remove every key.
    Clear,
    /// Merge key by key; `None` removes the key.
    Merge(BTreeMap<String, Option<String>>),
}

/// A `set` request (docs/protocol.md#set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetRequest {
    /// Deploy env.
    pub env: String,
    /// Application id.
    pub appid: String,
    /// Zone of every listed hostname.
    pub zone: String,
    /// Targets; each must exist.
    pub hostnames: Vec<String>,
    /// Empty, or one status per hostname.
    pub status: Vec<Status>,
    /// Empty, or one patch per hostname.
    pub metadata: Vec<MetadataPatch>,
    /// The change's time; 0 = now.
    pub set_timestamp: i64,
}

/// Why a `set` changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// A listed hostname does not exist.
    #[error("hostname {0} not found")]
    NotFound(String),
    /// `status` or `metadata` does not pair with `hostname`.
    #[error("{0} count does not match hostname count")]
    LengthMismatch(&'static str),
}

/// Answer of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// No such app (or only a tombstone).
    Unknown,
    /// The app exists but not in the requested zone.
    ZoneAbsent {
        /// The app's counter.
        latest_timestamp: i64,
    },
    /// InstancesInfo JSON.
    Found(Bytes),
}

/// Classification of one polled app (docs/protocol.md#long-poll).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollState {
    /// Not registered in scope, no live tombstone.
    Missing,
    /// Nothing newer than the caller's timestamp.
    Current,
    /// Newer, with UP instances: InstancesInfo JSON.
    Newer(Bytes),
    /// Newer, but no UP instance (all waiting, or a tombstone).
    NewerEmpty(Bytes),
}

/// What an eviction tick did.
#[derive(Debug, Clone, PartialEq)]
pub struct TickReport {
    /// Guard state used for the decision.
    pub guard: GuardState,
    /// Instances whose lease had expired.
    pub candidates: usize,
    /// The ones removed.
    pub evicted: Vec<Instance>,
}
