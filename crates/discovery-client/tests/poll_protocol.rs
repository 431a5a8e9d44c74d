//! What the SDK sends, recorded by a scripted fake registry: headers,
//! parameters, one poll in flight, pacing, node switches and timestamp
//! resets.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Fake, Script, Seen, code, config, polls_answer};
use discovery_client::{Config, Discovery};
use naming::{Instance, Registry, Resolution};

const EMPTY_FETCHS: &str = r#"{"code":0,"message":"0","ttl":1,"data":{}}"#;

/// Answers apps polled at timestamp 0 at once (at `ts`), else holds `hold`
/// and answers `-304`, like a quiet registry.
fn quiet(seen: &Seen, ts: i64, hold: Duration) -> (Duration, String) {
    let fresh: Vec<String> = seen
        .all("appid")
        .into_iter()
        .zip(seen.all("latest_timestamp"))
        .filter(|(_, t)| t == "0")
        .map(|(a, _)| a)
        .collect();
    if fresh.is_empty() {
        (hold, code(-304))
    } else {
        let apps: Vec<(&str, i64, &[&str])> = fresh
            .iter()
            .map(|a| (a.as_str(), ts, &["h1"][..]))
            .collect();
        (Duration::ZERO, polls_answer(&apps))
    }
}

fn quiet_registry(hold: Duration) -> Script {
    Arc::new(move |seen: &Seen| match seen.path.as_str() {
        "/discovery/polls" => quiet(seen, 100, hold),
        // Every app it is asked about is there, as its polls said.
        "/discovery/fetchs" => {
            let asked = seen.all("appid");
            let apps: Vec<(&str, i64, &[&str])> = asked
                .iter()
                .map(|a| (a.as_str(), 100, &["h1"][..]))
                .collect();
            (Duration::ZERO, polls_answer(&apps))
        }
        _ => (Duration::ZERO, code(0)),
    })
}

fn header(seen: &Seen) -> u64 {
    seen.headers["x1-bmspy-timeout"].parse().unwrap()
}

/// A fixed sleep: every caller says why time must pass.
async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn quick(nodes: &[String]) -> Config {
    let mut c = config(nodes);
    c.renew_interval = Duration::from_millis(300);
    c.backoff_base = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(400);
    c
}

/// Every request announces its own timeout; register,
/// renew and cancel carry the identity, one `addrs` per address and
/// `status=1`.
#[tokio::test]
async fn provider_requests_carry_identity_and_their_timeout() {
    let fake = Fake::start(quiet_registry(Duration::from_secs(1))).await;
    let d = Discovery::new(quick(&[fake.node()])).unwrap();
    let reg = d
        .register(Instance {
            appid: "demo.svc".into(),
            addrs: vec![
                "grpc://127.0.0.1:9000".into(),
                "http://127.0.0.1:8000".into(),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    common::eventually(
        Duration::from_millis(450),
        "a renew at a 300 ms period",
        || !fake.requests("/discovery/renew").is_empty(),
    )
    .await;
    reg.cancel().await.unwrap();
    let c = d.config().clone();
    let register = &fake.requests("/discovery/register")[0];
    assert_eq!(register.method, "POST");
    assert_eq!(
        register.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(
        register.all("addrs"),
        ["grpc://127.0.0.1:9000", "http://127.0.0.1:8000"]
    );
    assert_eq!(register.one("status"), "1");
    assert_eq!(register.one("metadata"), "");
    assert_eq!(header(register), 10_000);
    let renews = fake.requests("/discovery/renew");
    let cancel = &fake.requests("/discovery/cancel")[0];
    for r in [register, &renews[0], cancel] {
        for (k, v) in [
            ("region", &c.region),
            ("zone", &c.zone),
            ("env", &c.env),
            ("hostname", &c.hostname),
        ] {
            assert_eq!(&r.one(k), v, "{} {k}", r.path);
        }
        assert_eq!(r.one("appid"), "demo.svc");
    }
    assert_eq!(header(&renews[0]), 10_000);
    // A cancel is bounded by cancel_timeout (5 s), and says so.
    assert!(
        (4_000..=5_000).contains(&header(cancel)),
        "{}",
        header(cancel)
    );
    d.close().await.unwrap();
}

/// The first poll asks for a 2 s hold, steady ones for
/// 40 s; every watched appid shares one request, never two in flight; after
/// a `-304` the next poll starts at once.
#[tokio::test]
async fn one_poll_for_all_apps_with_steady_headers() {
    let hold = Duration::from_millis(1200);
    let fake = Fake::start(quiet_registry(hold)).await;
    let d = Discovery::new(quick(&[fake.node()])).unwrap();
    let watches: Vec<_> = ["a.svc", "b.svc", "c.svc"]
        .iter()
        .map(|a| d.watch(a).unwrap())
        .collect();
    for w in &watches {
        assert!(
            w.resolved(Duration::from_secs(2))
                .await
                .expect("resolved")
                .found()
                .is_some()
        );
    }
    // Fixed: past the first, short-hold polls, whatever their number.
    sleep_ms(500).await;
    fake.max_in_flight_polls.store(0, Ordering::SeqCst);
    let steady_from = fake.requests("/discovery/polls").len();
    // Fixed: a window of steady polls to look at.
    sleep_ms(3000).await;
    let polls = fake.requests("/discovery/polls");
    assert_eq!(header(&polls[0]), 2000, "first poll: short hold");
    let steady = &polls[steady_from..];
    assert!(steady.len() >= 2, "{} steady polls", steady.len());
    for p in steady {
        assert_eq!(header(p), 40_000);
        assert_eq!(
            p.all("appid"),
            ["a.svc", "b.svc", "c.svc", "infra.discovery"]
        );
        assert_eq!(p.all("latest_timestamp"), ["100", "100", "100", "100"]);
        // Polls carry the per-client identity, the configured hostname
        // plus a suffix.
        assert_eq!(
            (p.one("env"), p.one("hostname")),
            ("dev".into(), d.poll_identity().to_string())
        );
        assert!(
            d.poll_identity()
                .starts_with(&format!("{}#", d.config().hostname))
        );
        assert!(p.one("zone").is_empty());
    }
    assert_eq!(fake.max_in_flight_polls.load(Ordering::SeqCst), 1);
    for pair in steady.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at + hold);
        assert!(
            gap < Duration::from_millis(100),
            "next poll {gap:?} after -304"
        );
    }
    d.close().await.unwrap();
}

/// Polls of `fakes`, merged by arrival, labelled with the fake's index.
fn merged(fakes: &[&Fake]) -> Vec<(usize, Seen)> {
    let mut all: Vec<(usize, Seen)> = fakes
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            f.requests("/discovery/polls")
                .into_iter()
                .map(move |s| (i, s))
        })
        .collect();
    all.sort_by_key(|(_, s)| s.at);
    all
}

/// A registry whose second poll answer is bad in the given way.
fn second_poll_bad(bad: &'static str) -> Script {
    let n = Arc::new(AtomicUsize::new(0));
    Arc::new(move |seen: &Seen| {
        if seen.path != "/discovery/polls" {
            return (Duration::ZERO, EMPTY_FETCHS.to_string());
        }
        match n.fetch_add(1, Ordering::SeqCst) {
            0 => quiet(seen, 100, Duration::from_secs(1)),
            1 => (Duration::ZERO, bad.to_string()),
            _ => quiet(seen, 100, Duration::from_secs(1)),
        }
    })
}

/// Runs two fakes whose second answer is `bad`; checks that the poll after
/// it goes to the other node, after a backoff, with every timestamp reset.
async fn bad_answer_moves_to_the_other_node(bad: &'static str) {
    let a = Fake::start(second_poll_bad(bad)).await;
    let b = Fake::start(second_poll_bad(bad)).await;
    let d = Discovery::new(quick(&[a.node(), b.node()])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while merged(&[&a, &b]).len() < 4 {
        assert!(
            Instant::now() < deadline,
            "polls: {:?}",
            merged(&[&a, &b]).len()
        );
        sleep_ms(10).await;
    }
    let polls = merged(&[&a, &b]);
    let (x, first) = &polls[0];
    let (x2, second) = &polls[1];
    let (y, third) = &polls[2];
    assert_eq!(x, x2, "no switch after a good answer");
    assert_eq!(first.all("latest_timestamp"), ["0"]);
    assert_eq!(second.all("latest_timestamp"), ["100"]);
    assert_ne!(x, y, "the poll after a bad answer goes to the other node");
    assert_eq!(
        third.all("latest_timestamp"),
        ["0"],
        "timestamps reset on switch"
    );
    let waited = third.at.duration_since(second.at);
    assert!(
        waited >= Duration::from_millis(75),
        "no backoff: {waited:?}"
    );
    d.close().await.unwrap();
}

/// An app at `latest_timestamp` 0 is a server error.
#[tokio::test]
async fn zero_timestamp_answer_switches_node() {
    let bad = r#"{"code":0,"data":{"infra.discovery":{"instances":{},"latest_timestamp":0}},"error":{"-404":null},"message":"0"}"#;
    bad_answer_moves_to_the_other_node(bad).await;
}

/// An undecodable answer is a transport failure.
#[tokio::test]
async fn undecodable_answer_switches_node() {
    bad_answer_moves_to_the_other_node("<html>bad gateway</html>").await;
}

/// A non-zero code other than -304/-404 switches node too.
#[tokio::test]
async fn server_error_code_switches_node() {
    bad_answer_moves_to_the_other_node(r#"{"code":-500,"message":"-500","ttl":1}"#).await;
}

/// The loop moves to the next node periodically without errors.
#[tokio::test]
async fn periodic_rotation() {
    let a = Fake::start(quiet_registry(Duration::from_millis(300))).await;
    let b = Fake::start(quiet_registry(Duration::from_millis(300))).await;
    let mut c = quick(&[a.node(), b.node()]);
    c.node_rotation = Duration::from_millis(1000);
    let d = Discovery::new(c).unwrap();
    // Fixed: the rotations of 3.5 s are what is counted.
    sleep_ms(3500).await;
    let polls = merged(&[&a, &b]);
    let switches = polls.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert!(
        (2..=4).contains(&switches),
        "{switches} switches in 3.5 s at a 1 s rotation"
    );
    // Each switch starts the new node at timestamp 0.
    for w in polls.windows(2).filter(|w| w[0].0 != w[1].0) {
        assert_eq!(w[1].1.all("latest_timestamp"), ["0"]);
    }
    d.close().await.unwrap();
}

/// Dropping the last watch of an appid removes it from the
/// next poll; a remaining watch keeps its appid.
#[tokio::test]
async fn dropped_watch_leaves_the_poll_set() {
    let fake = Fake::start(quiet_registry(Duration::from_millis(500))).await;
    let d = Discovery::new(quick(&[fake.node()])).unwrap();
    let a = d.watch("a.svc").unwrap();
    let b = d.watch("b.svc").unwrap();
    let b2 = d.watch("b.svc").unwrap();
    assert!(
        b.resolved(Duration::from_secs(2))
            .await
            .expect("resolved")
            .found()
            .is_some()
    );
    drop(b);
    // Fixed: polls of 1.5 s must all still carry b.svc for b2.
    sleep_ms(1500).await;
    let n = fake.requests("/discovery/polls").len();
    assert!(
        fake.requests("/discovery/polls")[n - 1]
            .all("appid")
            .contains(&"b.svc".to_string())
    );
    drop(b2);
    let dropped = Instant::now();
    // The poll in flight may still carry it; the one after must not.
    // Fixed: a window of polls to look at.
    sleep_ms(2500).await;
    let polls = fake.requests("/discovery/polls");
    let after: Vec<&Seen> = polls.iter().filter(|p| p.at > dropped).collect();
    assert!(after.len() >= 2, "{} polls", after.len());
    for p in &after[1..] {
        assert_eq!(p.all("appid"), ["a.svc", "infra.discovery"]);
    }
    assert!(matches!(a.current(), Resolution::Found(_)));
    d.close().await.unwrap();
}

/// A `-404` for the whole request marks every polled app `NotFound` and
/// keeps the node.
#[tokio::test]
async fn whole_request_not_found() {
    let script: Script = Arc::new(|seen: &Seen| match seen.path.as_str() {
        "/discovery/polls" => (Duration::from_millis(50), code(-404)),
        _ => (Duration::ZERO, EMPTY_FETCHS.to_string()),
    });
    let a = Fake::start(script.clone()).await;
    let b = Fake::start(script).await;
    let d = Discovery::new(quick(&[a.node(), b.node()])).unwrap();
    let w = d.watch("ghost.svc").unwrap();
    let r = w.resolved(Duration::from_secs(2)).await.expect("resolved");
    assert!(
        matches!(r, Resolution::NotFound { ref env, .. } if env == "dev"),
        "{r:?}"
    );
    // Fixed: 2.5 s of polls must show no switch and the spacing.
    sleep_ms(2500).await;
    let polls = merged(&[&a, &b]);
    assert!(
        polls.windows(2).all(|w| w[0].0 == w[1].0),
        "switched node on -404"
    );
    // Spacing: an unchanged answer within 1 s delays the next poll.
    assert!(polls.len() <= 5, "{} polls in 2.5 s", polls.len());
    d.close().await.unwrap();
}
