use std::time::Duration;

use naming::{Instance, InstancesInfo, Status};
use rand::{SeedableRng, rngs::StdRng};

use super::*;

const T0: i64 = 1_700_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

fn ins(zone: &str, host: &str) -> Instance {
    Instance {
        region: "sh".into(),
        zone: zone.into(),
        env: "dev".into(),
        appid: "demo.svc".into(),
        hostname: host.into(),
        addrs: vec![format!("grpc://{host}:9000")],
        version: "v1".into(),
        status: Status::Up,
        ..Default::default()
    }
}

fn key(zone: &str, host: &str) -> InstanceKey {
    InstanceKey::new("dev", "demo.svc", zone, host)
}

fn info(reg: &Registry, zone: Option<&str>, mask: u32) -> InstancesInfo {
    match reg.fetch("dev", "demo.svc", zone, mask) {
        Fetched::Found(b) => serde_json::from_slice(&b).unwrap(),
        other => panic!("{other:?}"),
    }
}

fn short() -> RegistryParams {
    RegistryParams {
        lease: Duration::from_secs(1),
        evict_interval: Duration::from_millis(500),
        renew_interval: Duration::from_millis(250),
        ..RegistryParams::default()
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn new_copy_gets_now_then_overrides() {
    let reg = Registry::new(RegistryParams::default());
    let out = reg.register(
        ins("sh001", "h1"),
        RegisterOptions {
            dirty_timestamp: 5,
            reg_timestamp: 6,
            peer: true,
        },
        T0,
    );
    assert!(out.is_new && out.applied);
    let i = out.instance;
    assert_eq!(
        (
            i.reg_timestamp,
            i.up_timestamp,
            i.renew_timestamp,
            i.dirty_timestamp,
            i.latest_timestamp
        ),
        (6, T0, T0, 5, T0)
    );
}

#[test]
fn re_register_replaces_but_keeps_up_timestamp() {
    let reg = Registry::new(RegistryParams::default());
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    let mut newer = ins("sh001", "h1");
    newer.addrs = vec!["grpc://other:1".into()];
    newer.version = "v2".into();
    newer.metadata.insert("a".into(), "b".into());
    let out = reg.register(newer, RegisterOptions::default(), T0 + SEC);
    assert!(!out.is_new && out.applied);
    let got = reg.get(&key("sh001", "h1")).unwrap();
    assert_eq!(got.addrs, vec!["grpc://other:1"]);
    assert_eq!(got.version, "v2");
    assert_eq!(got.metadata["a"], "b");
    assert_eq!(got.up_timestamp, T0);
    assert_eq!(got.renew_timestamp, T0 + SEC);
}

#[test]
fn older_dirty_timestamp_loses_but_still_bumps() {
    let reg = Registry::new(RegistryParams::default());
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    let before = info(&reg, None, 3).latest_timestamp;
    let mut old = ins("sh001", "h1");
    old.version = "ancient".into();
    let out = reg.register(
        old,
        RegisterOptions {
            dirty_timestamp: T0 - 1,
            ..Default::default()
        },
        T0 + 1,
    );
    assert!(!out.applied);
    assert_eq!(reg.get(&key("sh001", "h1")).unwrap().version, "v1");
    assert!(info(&reg, None, 3).latest_timestamp > before);
}

#[test]
fn counter_is_strictly_increasing_even_with_a_stuck_clock() {
    let reg = Registry::new(RegistryParams::default());
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    reg.register(ins("sh002", "h1"), RegisterOptions::default(), T0);
    let a = info(&reg, None, 3);
    assert_eq!(a.latest_timestamp, T0 + 1);
    assert_eq!(a.len(), 2, "one hostname in two zones is two instances");
}

#[test]
fn renew_does_not_bump_and_peer_answers_arbitrate() {
    let reg = Registry::new(RegistryParams::default());
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    let latest = info(&reg, None, 3).latest_timestamp;
    let k = key("sh001", "h1");
    let Renewed::Ok(i) = reg.renew(&k, None, T0 + SEC) else {
        panic!()
    };
    assert_eq!(i.renew_timestamp, T0 + SEC);
    assert_eq!(info(&reg, None, 3).latest_timestamp, latest);
    assert!(matches!(
        reg.renew(&k, Some(T0 + 5), T0),
        Renewed::PeerNewer(_)
    ));
    assert!(matches!(
        reg.renew(&k, Some(T0 - 5), T0),
        Renewed::PeerOlder(_)
    ));
    assert!(matches!(reg.renew(&k, Some(T0), T0), Renewed::Ok(_)));
    assert_eq!(
        reg.renew(&key("sh001", "nope"), None, T0),
        Renewed::NotFound
    );
    assert_eq!(
        reg.renew(&InstanceKey::new("dev", "x", "sh001", "h1"), None, T0),
        Renewed::NotFound
    );
}

#[test]
fn cancel_removes_empty_zone_and_leaves_a_tombstone() {
    let reg = Registry::new(RegistryParams::default());
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    reg.register(ins("sh002", "h2"), RegisterOptions::default(), T0);
    assert!(reg.cancel(&key("sh002", "h2"), T0 + 1).is_some());
    assert!(!info(&reg, None, 3).instances.contains_key("sh002"));
    assert!(reg.cancel(&key("sh002", "h2"), T0 + 1).is_none());
    reg.cancel(&key("sh001", "h1"), T0 + 2);
    assert_eq!(reg.fetch("dev", "demo.svc", None, 3), Fetched::Unknown);
    let app = AppKey::new("dev", "demo.svc");
    let PollState::NewerEmpty(json) = reg.poll_state(&app, None, 0, T0 + 3) else {
        panic!("tombstone must answer as an empty app")
    };
    let empty: InstancesInfo = serde_json::from_slice(&json).unwrap();
    assert!(empty.instances.is_empty() && empty.latest_timestamp > 0);
    // After retention the tombstone is gone.
    let later = T0 + 6 * 60 * SEC;
    reg.tick(later, &mut rng());
    assert_eq!(reg.poll_state(&app, None, 0, later), PollState::Missing);
}

#[test]
fn fetch_filters_zone_and_status() {
    let reg = Registry::new(RegistryParams::default());
    reg.register(ins("sh001", "b"), RegisterOptions::default(), T0);
    reg.register(ins("sh001", "a"), RegisterOptions::default(), T0);
    let mut w = ins("sh002", "c");
    w.status = Status::Waiting;
    reg.register(w, RegisterOptions::default(), T0);
    let up = info(&reg, None, 1);
    assert_eq!(up.instances["sh002"], vec![], "emptied zones stay");
    let hosts: Vec<_> = up.instances["sh001"].iter().map(|i| &i.hostname).collect();
    assert_eq!(hosts, ["a", "b"]);
    assert_eq!(info(&reg, None, 2).len(), 1);
    assert_eq!(info(&reg, None, 3).len(), 3);
    assert_eq!(info(&reg, None, 4).len(), 0);
    assert_eq!(info(&reg, Some("sh002"), 3).instances.len(), 1);
    assert!(matches!(
        reg.fetch("dev", "demo.svc", Some("sh009"), 1),
        Fetched::ZoneAbsent { .. }
    ));
}

#[test]
fn set_is_atomic_and_stamps() {
    let reg = Registry::new(RegistryParams::default());
    let mut a = ins("sh001", "a");
    a.metadata.insert("weight".into(), "10".into());
    reg.register(a, RegisterOptions::default(), T0);
    reg.register(ins("sh001", "b"), RegisterOptions::default(), T0);
    let mut req = SetRequest {
        env: "dev".into(),
        appid: "demo.svc".into(),
        zone: "sh001".into(),
        hostnames: vec!["a".into(), "ghost".into()],
        status: vec![Status::Waiting, Status::Waiting],
        metadata: vec![],
        set_timestamp: T0 + 7,
    };
    assert_eq!(
        reg.set(&req, T0 + 1),
        Err(SetError::NotFound("ghost".into()))
    );
    assert_eq!(reg.get(&key("sh001", "a")).unwrap().status, Status::Up);

    req.hostnames = vec!["a".into()];
    req.status = vec![Status::Waiting];
    req.metadata = vec![MetadataPatch::Merge(BTreeMap::from([(
        "x".to_string(),
        Some("1".to_string()),
    )]))];
    reg.set(&req, T0 + 1).unwrap();
    let a = reg.get(&key("sh001", "a")).unwrap();
    assert_eq!(a.status, Status::Waiting);
    assert_eq!(a.metadata.len(), 2);
    assert_eq!((a.dirty_timestamp, a.latest_timestamp), (T0 + 7, T0 + 7));

    req.status = vec![Status::Up];
    req.metadata = vec![MetadataPatch::Clear];
    req.set_timestamp = 0;
    reg.set(&req, T0 + 9).unwrap();
    let a = reg.get(&key("sh001", "a")).unwrap();
    assert_eq!(a.up_timestamp, T0 + 9);
    assert!(a.metadata.is_empty());

    req.status = vec![Status::Up, Status::Up];
    assert_eq!(reg.set(&req, T0), Err(SetError::LengthMismatch("status")));
}

#[test]
fn lease_expiry_evicts_when_not_protected() {
    let reg = Registry::new(RegistryParams {
        self_preservation: false,
        ..short()
    });
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    // Not yet past the lease.
    assert!(reg.tick(T0 + SEC, &mut rng()).evicted.is_empty());
    let r = reg.tick(T0 + SEC + 1, &mut rng());
    assert_eq!(r.evicted.len(), 1);
    assert!(reg.is_empty());
}

#[test]
fn one_tick_evicts_at_most_fifteen_percent() {
    for (size, cap) in [(1, 1), (5, 1), (7, 2), (10, 2), (100, 15)] {
        let reg = Registry::new(RegistryParams {
            self_preservation: false,
            ..short()
        });
        for h in 0..size {
            reg.register(
                ins("sh001", &format!("h{h}")),
                RegisterOptions::default(),
                T0,
            );
        }
        let r = reg.tick(T0 + 10 * SEC, &mut rng());
        assert_eq!(r.evicted.len(), cap, "size {size}");
        assert_eq!(reg.len(), size - cap);
    }
}

#[test]
fn protection_suspends_eviction_until_renews_return() {
    let reg = Registry::new(short());
    for h in 0..10 {
        reg.register(
            ins("sh001", &format!("h{h}")),
            RegisterOptions::default(),
            T0,
        );
    }
    // E = 20, T = 17; no renews in the previous tick → protected.
    let r = reg.tick(T0 + 10 * SEC, &mut rng());
    assert!(r.guard.protected);
    assert_eq!((r.guard.expected, r.guard.threshold), (20, 17));
    assert!(r.evicted.is_empty());
    // 17 renews in the next tick (instances h0..h8, twice; h9 never) → not
    // protected, h9 is evicted (the others were just renewed).
    let now = T0 + 11 * SEC;
    for round in 0..2 {
        for h in 0..9 {
            if round == 1 && h == 8 {
                continue;
            }
            reg.renew(&key("sh001", &format!("h{h}")), None, now);
        }
    }
    let r = reg.tick(now, &mut rng());
    assert_eq!(r.guard.renews, 17);
    assert!(!r.guard.protected);
    assert_eq!(r.evicted.len(), 1);
    assert_eq!(r.evicted[0].hostname, "h9");
    // Eviction lowers E like a cancel.
    assert_eq!(reg.guard_state().expected, 18);
}

#[test]
fn ceiling_evicts_even_when_protected() {
    let reg = Registry::new(RegistryParams {
        evict_ceiling: Duration::from_secs(5),
        ..short()
    });
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    let r = reg.tick(T0 + 3 * SEC, &mut rng());
    assert!(r.guard.protected && r.evicted.is_empty());
    let r = reg.tick(T0 + 6 * SEC, &mut rng());
    assert_eq!(r.evicted.len(), 1);
}

#[test]
fn expected_is_rebased_periodically() {
    let reg = Registry::new(short());
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    reg.register(ins("sh001", "h2"), RegisterOptions::default(), T0);
    reg.cancel(&key("sh001", "h2"), T0);
    reg.cancel(&key("sh001", "h2"), T0);
    assert_eq!(reg.guard_state().expected, 2);
    reg.tick(T0, &mut rng());
    reg.renew(&key("sh001", "h1"), None, T0 + 16 * 60 * SEC);
    reg.tick(T0 + 16 * 60 * SEC, &mut rng());
    assert_eq!(reg.guard_state().expected, 2);
}

#[test]
fn poll_states() {
    let reg = Registry::new(RegistryParams::default());
    let app = AppKey::new("dev", "demo.svc");
    assert_eq!(reg.poll_state(&app, None, 0, T0), PollState::Missing);
    let mut w = ins("sh001", "h1");
    w.status = Status::Waiting;
    reg.register(w, RegisterOptions::default(), T0);
    assert!(matches!(
        reg.poll_state(&app, None, 0, T0),
        PollState::NewerEmpty(_)
    ));
    assert_eq!(reg.poll_state(&app, None, T0, T0), PollState::Current);
    assert_eq!(
        reg.poll_state(&app, Some("sh002"), 0, T0),
        PollState::Missing
    );
    reg.register(ins("sh001", "h2"), RegisterOptions::default(), T0);
    let PollState::Newer(json) = reg.poll_state(&app, None, T0, T0) else {
        panic!()
    };
    let got: InstancesInfo = serde_json::from_slice(&json).unwrap();
    assert_eq!(got.len(), 1, "UP instances only");
}

#[test]
fn shared_answer_is_rebuilt_after_a_renew() {
    let reg = Registry::new(RegistryParams::default());
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    let a = info(&reg, None, 1);
    reg.renew(&key("sh001", "h1"), None, T0 + SEC);
    let b = info(&reg, None, 1);
    assert_eq!(a.latest_timestamp, b.latest_timestamp);
    assert_eq!(b.instances["sh001"][0].renew_timestamp, T0 + SEC);
}

#[test]
fn scheduler_change_bumps_and_is_served() {
    let reg = Registry::new(RegistryParams::default());
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    let before = info(&reg, None, 1).latest_timestamp;
    let s = naming::Scheduler::from_json(r#"[{"src":"sh001","dst":{"sh001":1}}]"#).unwrap();
    let app = AppKey::new("dev", "demo.svc");
    reg.set_scheduler(&app, Some(s.clone()), T0);
    let after = info(&reg, None, 1);
    assert!(after.latest_timestamp > before);
    assert_eq!(after.scheduler, Some(s.clone()));
    // The same scheduler again is no change.
    reg.set_scheduler(&app, Some(s), T0);
    assert_eq!(info(&reg, None, 1).latest_timestamp, after.latest_timestamp);
}

#[test]
fn fetch_all_sorts_by_env_zone_hostname() {
    let reg = Registry::new(RegistryParams::default());
    let mut p = ins("sh002", "a");
    p.env = "prod".into();
    reg.register(p, RegisterOptions::default(), T0);
    reg.register(ins("sh002", "a"), RegisterOptions::default(), T0);
    reg.register(ins("sh001", "z"), RegisterOptions::default(), T0);
    let all = reg.all();
    let order: Vec<_> = all["demo.svc"]
        .iter()
        .map(|i| format!("{}/{}/{}", i.env, i.zone, i.hostname))
        .collect();
    assert_eq!(order, ["dev/sh001/z", "dev/sh002/a", "prod/sh002/a"]);
}

#[test]
fn a_peer_copy_older_than_a_cancel_is_refused() {
    let reg = Registry::new(RegistryParams::default());
    let peer = |dirty| RegisterOptions {
        dirty_timestamp: dirty,
        peer: true,
        ..Default::default()
    };
    reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    // Cancelled at T0 + 10 on another node.
    assert!(
        reg.cancel_at(&key("sh001", "h1"), T0 + 20, T0 + 10, true)
            .is_some()
    );
    // A stale copy (a repair from a node that missed the cancel) is refused.
    let out = reg.register(ins("sh001", "h1"), peer(T0), T0 + 30);
    assert!(!out.applied);
    assert!(reg.get(&key("sh001", "h1")).is_none());
    let mut stale = ins("sh001", "h1");
    stale.dirty_timestamp = T0;
    assert!(!reg.merge(stale, T0 + 30).applied);
    // A copy made after the cancel is taken, and so is a client's register.
    assert!(
        reg.register(ins("sh001", "h1"), peer(T0 + 11), T0 + 30)
            .applied
    );
    reg.cancel(&key("sh001", "h1"), T0 + 40);
    assert!(
        reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0 + 41)
            .applied
    );
    // The memory of a cancel lasts `tombstone_retention`.
    reg.cancel(&key("sh001", "h1"), T0 + 50);
    reg.tick(T0 + 50 + 6 * 60 * SEC, &mut rng());
    assert!(
        reg.register(ins("sh001", "h1"), peer(T0), T0 + 7 * 60 * SEC)
            .applied
    );
}

#[test]
fn a_peer_copy_of_an_instance_evicted_here_is_taken_back() {
    // The lease expired here (renews went to another node), but the peer
    // that still renews it sends its copy: that is proof of life, not a
    // stale copy of a cancelled instance.
    let reg = Registry::new(RegistryParams {
        self_preservation: false,
        ..short()
    });
    let out = reg.register(ins("sh001", "h1"), RegisterOptions::default(), T0);
    let dirty = out.instance.dirty_timestamp;
    let r = reg.tick(T0 + 3 * SEC, &mut rng());
    assert_eq!(r.evicted.len(), 1);
    let repair = RegisterOptions {
        dirty_timestamp: dirty,
        peer: true,
        ..Default::default()
    };
    assert!(
        reg.register(ins("sh001", "h1"), repair, T0 + 3 * SEC)
            .applied
    );
    assert!(reg.get(&key("sh001", "h1")).is_some());
    assert_eq!(reg.tombstones(), 0);
}
