//! Property test of the registry core against a plain reference model:
//! random sequences of register, renew, cancel, set and eviction ticks under
//! a controlled clock must leave both equal, and every app's
//! `latest_timestamp` must strictly increase on each change and only then.

use std::{collections::BTreeMap, time::Duration};

use discovery_server::registry::{
    AppKey, InstanceKey, MetadataPatch, RegisterOptions, Registry, RegistryParams, Renewed,
    SetRequest,
};
use naming::{Instance, Status};
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

const T0: i64 = 1_700_000_000_000_000_000;
const MS: i64 = 1_000_000;
const APPS: [&str; 3] = ["a", "b", "c"];
const ZONES: [&str; 2] = ["z1", "z2"];
const HOSTS: [&str; 4] = ["h1", "h2", "h3", "h4"];

#[derive(Debug, Clone)]
enum Op {
    Register {
        app: usize,
        zone: usize,
        host: usize,
        waiting: bool,
        dirty_back: Option<i64>,
        version: u8,
    },
    Renew {
        app: usize,
        zone: usize,
        host: usize,
    },
    Cancel {
        app: usize,
        zone: usize,
        host: usize,
    },
    Set {
        app: usize,
        zone: usize,
        hosts: Vec<usize>,
        status: Option<bool>,
        meta: Option<u8>,
    },
    Advance(i64),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..2usize, 0..4usize, any::<bool>(), proptest::option::of(-3000i64..3000), any::<u8>())
            .prop_map(|(app, zone, host, waiting, dirty_back, version)| Op::Register { app, zone, host, waiting, dirty_back, version }),
        3 => (0..3usize, 0..2usize, 0..4usize).prop_map(|(app, zone, host)| Op::Renew { app, zone, host }),
        2 => (0..3usize, 0..2usize, 0..4usize).prop_map(|(app, zone, host)| Op::Cancel { app, zone, host }),
        2 => (0..3usize, 0..2usize, proptest::collection::vec(0..4usize, 1..3), proptest::option::of(any::<bool>()), proptest::option::of(0u8..3))
            .prop_map(|(app, zone, hosts, status, meta)| Op::Set { app, zone, hosts, status, meta }),
        3 => (1i64..4000).prop_map(|ms| Op::Advance(ms * MS)),
        1 => Just(Op::Tick),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct M {
    status: Status,
    version: String,
    metadata: BTreeMap<String, String>,
    up: i64,
    renew: i64,
    dirty: i64,
}

fn key(app: usize, zone: usize, host: usize) -> InstanceKey {
    InstanceKey::new("dev", APPS[app], ZONES[zone], HOSTS[host])
}

fn params() -> RegistryParams {
    RegistryParams {
        lease: Duration::from_secs(5),
        evict_interval: Duration::from_secs(1),
        renew_interval: Duration::from_millis(500),
        self_preservation: false,
        ..RegistryParams::default()
    }
}

fn check(reg: &Registry, model: &BTreeMap<InstanceKey, M>) -> Result<(), TestCaseError> {
    let all: Vec<Instance> = reg.all().into_values().flatten().collect();
    prop_assert_eq!(all.len(), model.len());
    for ins in all {
        let k = InstanceKey::of(&ins);
        let m = model
            .get(&k)
            .ok_or_else(|| TestCaseError::fail(format!("extra {k:?}")))?;
        let got = M {
            status: ins.status,
            version: ins.version,
            metadata: ins.metadata,
            up: ins.up_timestamp,
            renew: ins.renew_timestamp,
            dirty: ins.dirty_timestamp,
        };
        prop_assert_eq!(&got, m, "{:?}", k);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn core_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let reg = Registry::new(params());
        let mut model: BTreeMap<InstanceKey, M> = BTreeMap::new();
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        let mut now = T0;
        let mut rng = StdRng::seed_from_u64(1);
        for op in ops {
            // Apps whose counter must move because of this op.
            let mut changed: Vec<&str> = Vec::new();
            match op {
                Op::Register { app, zone, host, waiting, dirty_back, version } => {
                    let k = key(app, zone, host);
                    let dirty = dirty_back.map_or(0, |b| (now - b * MS).max(1));
                    let status = if waiting { Status::Waiting } else { Status::Up };
                    let ins = Instance {
                        zone: k.zone.clone(), env: k.env.clone(), appid: k.appid.clone(), hostname: k.hostname.clone(),
                        addrs: vec!["grpc://x:1".into()], version: version.to_string(), status, ..Default::default()
                    };
                    reg.register(ins, RegisterOptions { dirty_timestamp: dirty, ..RegisterOptions::default() }, now);
                    let incoming_dirty = if dirty > 0 { dirty } else { now };
                    let fresh = M { status, version: version.to_string(), metadata: BTreeMap::new(), up: now, renew: now, dirty: incoming_dirty };
                    match model.get_mut(&k) {
                        Some(old) if incoming_dirty < old.dirty => {}
                        Some(old) => { let up = old.up; *old = M { up, ..fresh }; }
                        None => { model.insert(k, fresh); }
                    }
                    changed.push(APPS[app]);
                }
                Op::Renew { app, zone, host } => {
                    let k = key(app, zone, host);
                    let out = reg.renew(&k, None, now);
                    match model.get_mut(&k) {
                        Some(m) => { prop_assert!(matches!(out, Renewed::Ok(_))); m.renew = now; }
                        None => prop_assert_eq!(out, Renewed::NotFound),
                    }
                }
                Op::Cancel { app, zone, host } => {
                    let k = key(app, zone, host);
                    let out = reg.cancel(&k, now);
                    prop_assert_eq!(out.is_some(), model.remove(&k).is_some());
                    if out.is_some() { changed.push(APPS[app]); }
                }
                Op::Set { app, zone, hosts, status, meta } => {
                    let hostnames: Vec<String> = hosts.iter().map(|h| HOSTS[*h].to_string()).collect();
                    let st = status.map(|w| if w { Status::Waiting } else { Status::Up });
                    let patch = meta.map(|m| match m {
                        0 => MetadataPatch::Clear,
                        m => MetadataPatch::Merge(BTreeMap::from([(format!("k{m}"), Some("v".to_string()))])),
                    });
                    let req = SetRequest {
                        env: "dev".into(), appid: APPS[app].into(), zone: ZONES[zone].into(),
                        hostnames: hostnames.clone(),
                        status: st.map(|s| vec![s; hostnames.len()]).unwrap_or_default(),
                        metadata: patch.clone().map(|p| vec![p; hostnames.len()]).unwrap_or_default(),
                        set_timestamp: 0,
                    };
                    let all_exist = hosts.iter().all(|h| model.contains_key(&key(app, zone, *h)));
                    let out = reg.set(&req, now);
                    prop_assert_eq!(out.is_ok(), all_exist);
                    if all_exist {
                        for h in &hosts {
                            let m = model.get_mut(&key(app, zone, *h)).unwrap();
                            if let Some(s) = st { m.status = s; if s == Status::Up { m.up = now; } }
                            match &patch {
                                Some(MetadataPatch::Clear) => m.metadata.clear(),
                                Some(MetadataPatch::Merge(p)) => for (k, v) in p { m.metadata.insert(k.clone(), v.clone().unwrap()); },
                                None => {}
                            }
                            m.dirty = now;
                        }
                        changed.push(APPS[app]);
                    }
                }
                Op::Advance(dt) => now += dt,
                Op::Tick => {
                    let lease = 5_000 * MS;
                    let candidates: Vec<InstanceKey> =
                        model.iter().filter(|(_, m)| now - m.renew > lease).map(|(k, _)| k.clone()).collect();
                    let size = model.len();
                    let cap = size - (size as f64 * 0.85).floor() as usize;
                    let report = reg.tick(now, &mut rng);
                    prop_assert_eq!(report.evicted.len(), candidates.len().min(cap));
                    for e in &report.evicted {
                        let k = InstanceKey::of(e);
                        prop_assert!(candidates.contains(&k), "evicted a live instance {:?}", k);
                        model.remove(&k);
                        changed.push(APPS.iter().find(|a| **a == k.appid).copied().unwrap());
                    }
                }
            }
            check(&reg, &model)?;
            for app in APPS {
                let now_latest = reg.latest(&AppKey::new("dev", app)).unwrap_or(0);
                let before = latest.get(app).copied().unwrap_or(0);
                if changed.contains(&app) {
                    prop_assert!(now_latest > before, "{} counter did not move: {} → {}", app, before, now_latest);
                } else if now_latest != 0 {
                    prop_assert_eq!(now_latest, before, "{} counter moved without a change", app);
                }
                if now_latest != 0 { latest.insert(app, now_latest); }
            }
        }
    }
}
