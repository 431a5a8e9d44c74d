//! Deterministic subsetting with golden vectors
//! for the hash and the PRNG.

use std::collections::{BTreeMap, BTreeSet};

use discovery_tonic::pipeline::{SplitMix64, fnv1a64, subset, subset_for_id};
use naming::Instance;

fn backends(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|i| Instance {
            hostname: format!("host-{i:04}"),
            addrs: vec![format!("grpc://10.0.{}.{}:9000", i / 256, i % 256)],
            ..Default::default()
        })
        .collect()
}

fn names(list: &[Instance]) -> Vec<&str> {
    list.iter().map(|i| i.hostname.as_str()).collect()
}

#[test]
fn fnv1a64_golden_vectors() {
    assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64("foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn splitmix64_golden_vectors() {
    let mut r = SplitMix64::new(0);
    assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
    assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    let mut r = SplitMix64::new(1234567);
    assert_eq!(r.next_u64(), 0x599e_d017_fb08_fc85);
}

#[test]
fn subset_golden_vector() {
    // Pinned so that a change of hash, PRNG or shuffle cannot go unnoticed:
    // every client's subset would move. Cross-checked against an independent
    // Python transcription.
    let all = backends(10);
    let mine = subset(&all, 3, "demo-client-1");
    assert_eq!(names(&mine), GOLDEN);
}
const GOLDEN: [&str; 3] = ["host-0003", "host-0008", "host-0001"];

#[test]
fn small_sets_are_returned_unchanged() {
    let all = backends(5);
    assert_eq!(subset(&all, 5, "c"), all);
    assert_eq!(subset(&all, 50, "c"), all);
    assert_eq!(subset(&all, 0, "c"), all, "0 disables subsetting");
}

#[test]
fn subset_is_stable_and_order_independent() {
    let all = backends(200);
    let a = subset(&all, 50, "demo-client-1");
    assert_eq!(a.len(), 50);
    assert_eq!(a, subset(&all, 50, "demo-client-1"));
    let mut shuffled = all.clone();
    let mut rng = SplitMix64::new(99);
    for i in (1..shuffled.len()).rev() {
        shuffled.swap(i, rng.below(i + 1));
    }
    assert_ne!(names(&shuffled), names(&all));
    assert_eq!(a, subset(&shuffled, 50, "demo-client-1"));
    let uniq: BTreeSet<_> = names(&a).into_iter().collect();
    assert_eq!(uniq.len(), 50, "no duplicates");
}

#[test]
fn clients_of_one_round_get_disjoint_subsets() {
    // 200 backends / 50 = 4 clients per round; ids 8..12 are
    // round 2.
    let all = backends(200);
    let subsets: Vec<BTreeSet<String>> = (8..12)
        .map(|id| {
            subset_for_id(&all, 50, id)
                .into_iter()
                .map(|i| i.hostname)
                .collect()
        })
        .collect();
    for (i, a) in subsets.iter().enumerate() {
        assert_eq!(a.len(), 50);
        for b in &subsets[i + 1..] {
            assert!(a.is_disjoint(b));
        }
    }
    let union: BTreeSet<_> = subsets.iter().flatten().collect();
    assert_eq!(union.len(), 200, "one round covers every backend");
    // The next round is another permutation.
    assert_ne!(subset_for_id(&all, 50, 8), subset_for_id(&all, 50, 12));
}

#[test]
fn load_spreads_evenly_over_many_clients() {
    let all = backends(200);
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for c in 0..1000 {
        for ins in subset(&all, 50, &format!("demo-client-{c}")) {
            *load.entry(ins.hostname).or_default() += 1;
        }
    }
    assert_eq!(load.len(), 200, "every backend serves someone");
    let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
    println!("clients per backend: min {min} max {max} (mean 250)");
    assert!(*min > 180 && *max < 320, "min {min} max {max}");
}
