//! The resolution pipeline: filter, zone scheduling and
//! deterministic subsetting, as pure functions over registry snapshots.
//!
//! Order (on a copy): [`filter`] every zone, [`schedule`] the client zone,
//! [`subset`] every zone; [`apply`] runs all three. The gRPC layer then
//! prefers the client zone's list, or every zone concatenated when it is
//! empty ([`select`]), and keeps the other zones' instances ([`fallback`])
//! for when none of the preferred ones answers.
//!
//! The hash ([`fnv1a64`]) and the PRNG ([`SplitMix64`]) are fixed and
//! documented so that a client's subset never changes with a Rust release.
//!
//! ```
//! use discovery_tonic::pipeline;
//! use naming::Instance;
//!
//! let backends: Vec<Instance> = (0..200)
//!     .map(|i| Instance { hostname: format!("h{i:03}"), ..Default::default() })
//!     .collect();
//! let mine = pipeline::subset(&backends, 50, "demo-client-1");
//! assert_eq!(mine.len(), 50);
//! assert_eq!(mine, pipeline::subset(&backends, 50, "demo-client-1"));
//! ```

use std::collections::BTreeMap;

use naming::{BuildOptions, Instance, InstancesInfo, Scheduler};

/// FNV-1a offset basis (64 bit).
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a prime (64 bit).
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of the UTF-8 bytes of `s`: the client id hash.
pub fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// SplitMix64 (Steele, Lea, Flood; Vigna's reference constants): the subset
/// shuffle's PRNG. Small, fast and stable across versions, unlike
/// `rand::StdRng`.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The golden-ratio increment.
    pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    /// A generator starting at `seed`.
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next output.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        mix(self.state)
    }

    /// A uniform index in `0..bound` by the multiply-shift
    /// (`(x as u128 × bound) >> 64`); `bound` must be > 0.
    pub fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }
}

/// The SplitMix64 output function, shared with the balancer's lock-free
/// random source.
pub(crate) fn mix(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// keeps an instance iff `clusters` is empty or lists its `cluster`
/// metadata, and one of its addresses has exactly `scheme`. Emptied zone keys
/// remain.
pub fn filter(instances: &mut BTreeMap<String, Vec<Instance>>, scheme: &str, clusters: &[String]) {
    for list in instances.values_mut() {
        list.retain(|ins| {
            let cluster_ok = clusters.is_empty()
                || ins
                    .cluster()
                    .is_some_and(|c| clusters.iter().any(|x| x == c));
            // `grpcs://` is gRPC over TLS (docs/tls.md#grpc): a `grpc`
            // target takes both.
            cluster_ok
                && (ins.addr(scheme).is_some() || (scheme == "grpc" && ins.addr("grpcs").is_some()))
        });
    }
}

/// replaces the client zone's list with the zones its scheduler entry
/// lists, each cut down in proportion to its weight. Scores are compared and
/// computed by integer cross-multiplication, so the result is exact.
///
/// Without a scheduler or an entry for `client_zone`, or when the result is
/// empty, nothing changes.
pub fn schedule(
    instances: &mut BTreeMap<String, Vec<Instance>>,
    scheduler: Option<&Scheduler>,
    client_zone: &str,
    subset_size: usize,
    client_id: &str,
) {
    let Some(entry) = scheduler.and_then(|s| s.clients.get(client_zone)) else {
        return;
    };
    // Zones that can take traffic, in zone-name order (BTreeMap order).
    let zones: Vec<(&str, u128, u128)> = entry
        .zones
        .iter()
        .filter(|(_, w)| w.weight > 0)
        .filter_map(|(zone, w)| {
            let count = instances.get(zone).map_or(0, Vec::len);
            (count > 0).then_some((zone.as_str(), count as u128, w.weight as u128))
        })
        .collect();
    // Bottleneck: the lowest count / weight, first in zone order on ties.
    let Some(&(_, mut num, den)) = zones
        .iter()
        .reduce(|best, z| if z.1 * best.2 < best.1 * z.2 { z } else { best })
    else {
        return;
    };
    if subset_size > 0 && num > subset_size as u128 {
        num = subset_size as u128;
    }
    let mut scheduled = Vec::new();
    for &(zone, count, weight) in &zones {
        let n = (num * weight / den).max(1);
        let list = &instances[zone];
        if n < count {
            scheduled.extend(subset(list, n as usize, client_id));
        } else {
            scheduled.extend(list.iter().cloned());
        }
    }
    if !scheduled.is_empty() {
        instances.insert(client_zone.to_string(), scheduled);
    }
}

/// a deterministic subset of `n` instances for the client `client_id`.
///
/// Clients whose hashes fall in one round get pairwise disjoint subsets; a
/// client's subset is stable while the backend set is, whatever its order.
pub fn subset(instances: &[Instance], n: usize, client_id: &str) -> Vec<Instance> {
    subset_for_id(instances, n, fnv1a64(client_id))
}

/// [`subset`] for a client whose id is already hashed: clients with ids in
/// `[k × count, (k + 1) × count)` (`count = len / n`) share round `k`.
pub fn subset_for_id(instances: &[Instance], n: usize, id: u64) -> Vec<Instance> {
    if n == 0 || instances.len() <= n {
        return instances.to_vec();
    }
    let mut sorted = instances.to_vec();
    sorted.sort_by(|a, b| {
        a.hostname
            .cmp(&b.hostname)
            .then_with(|| a.addrs.first().cmp(&b.addrs.first()))
    });
    let count = (sorted.len() / n).max(1) as u64;
    let mut rng = SplitMix64::new(id / count);
    for i in (1..sorted.len()).rev() {
        let j = rng.below(i + 1);
        sorted.swap(i, j);
    }
    let start = (id % count) as usize * n;
    sorted.into_iter().skip(start).take(n).collect()
}

/// Runs the whole pipeline on a copy of `info`: [`filter`], [`schedule`]
/// for `client_zone`, then [`subset`] every zone to `options.subset`.
///
/// `options.client_zone`, when set, overrides `client_zone`; `client_id` is
/// the subset key (the SDK's hostname).
pub fn apply(
    info: &InstancesInfo,
    options: &BuildOptions,
    client_zone: &str,
    client_id: &str,
) -> InstancesInfo {
    let zone = options.client_zone.as_deref().unwrap_or(client_zone);
    let mut instances = info.instances.clone();
    filter(&mut instances, &options.scheme, &options.clusters);
    schedule(
        &mut instances,
        info.scheduler.as_ref(),
        zone,
        options.subset,
        client_id,
    );
    if options.subset > 0 {
        for list in instances.values_mut() {
            if list.len() > options.subset {
                *list = subset(list, options.subset, client_id);
            }
        }
    }
    InstancesInfo {
        instances,
        scheduler: info.scheduler.clone(),
        latest_timestamp: info.latest_timestamp,
    }
}

/// The instances the gRPC layer uses: the client zone's list, or every zone
/// concatenated (in zone order) when it is empty or `client_zone` is `None`.
pub fn select<'a>(info: &'a InstancesInfo, client_zone: Option<&str>) -> Vec<&'a Instance> {
    match client_zone.and_then(|z| info.instances.get(z)) {
        Some(list) if !list.is_empty() => list.iter().collect(),
        _ => info.iter().collect(),
    }
}

/// The instances the gRPC layer falls back to when none of [`select`]'s
/// answers: every other zone's, in zone order. Empty when `select` already
/// took every zone.
///
/// A scheduled client zone's list may name instances of these zones too;
/// the balancer merges an address listed twice into its first, preferred,
/// occurrence.
pub fn fallback<'a>(info: &'a InstancesInfo, client_zone: Option<&str>) -> Vec<&'a Instance> {
    match client_zone {
        Some(zone) if info.instances.get(zone).is_some_and(|l| !l.is_empty()) => info
            .instances
            .iter()
            .filter(|(z, _)| z.as_str() != zone)
            .flat_map(|(_, list)| list.iter())
            .collect(),
        _ => Vec::new(),
    }
}
