//! The SDK against the Go original's long-poll rules (`testkit::go_double`):
//! one waiter per (appid, consumer hostname) shared by every poll with that
//! hostname, a 30 s hold, and the Go answer shapes.

mod common;

use std::time::{Duration, Instant};

use common::{hostnames, instance, wait_state};
use discovery_client::{Config, Discovery};
use naming::{Registry, Resolution};
use testkit::go_double::{GoDouble, GoDoubleConfig};

/// Anything near this means a change waited for the hold to end.
const WELL_UNDER_HOLD: Duration = Duration::from_secs(3);

async fn go() -> GoDouble {
    // The Go server's own 30 s hold: a missed wake-up cannot hide.
    GoDouble::start(GoDoubleConfig::default()).await
}

fn sdk(go: &GoDouble, hostname: &str) -> Discovery {
    let mut c: Config = common::config(&[go.addr().to_string()]);
    c.hostname = hostname.into();
    Discovery::new(c).unwrap()
}

/// Waits until the double holds a poll of `appid` for every consumer
/// (waiters are keyed by the poll hostname), i.e. nothing is in flight.
async fn parked(go: &GoDouble, appid: &str, polls: usize) {
    common::eventually(Duration::from_secs(5), "polls held", || {
        go.held_polls() >= polls && !go.waiters(appid).is_empty()
    })
    .await;
}

async fn seen(
    w: &discovery_client::Watch,
    what: &str,
    pred: impl FnMut(&Resolution) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut rx = w.subscribe();
    wait_state(&mut rx, WELL_UNDER_HOLD, what, pred).await;
    start.elapsed()
}

/// A watch started before its provider existed sees the provider as soon
/// as it registers, not at the end of the 30 s hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_before_provider_sees_it_at_once() {
    let go = go().await;
    let consumer = sdk(&go, "consumer-1");
    let w = consumer.watch("late.svc").unwrap();
    assert!(matches!(
        w.resolved(Duration::from_secs(2)).await,
        Resolution::NotFound { .. }
    ));
    parked(&go, "late.svc", 1).await;

    let provider = sdk(&go, "provider-1");
    let start = Instant::now();
    let reg = provider.register(instance("late.svc", 9000)).await.unwrap();
    let mut rx = w.subscribe();
    wait_state(&mut rx, WELL_UNDER_HOLD, "provider seen", |r| {
        hostnames(r) == ["provider-1"]
    })
    .await;
    let took = start.elapsed();
    println!("consumer before provider: provider seen {took:?} after its register started");
    reg.cancel().await.unwrap();
    let _ = tokio::join!(consumer.close(), provider.close());
    go.shutdown().await;
}

/// A watch restarted under the same hostname (a restarted process keeps its
/// HOSTNAME) sees the next change at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_watch_under_the_same_hostname_sees_the_next_change() {
    let go = go().await;
    let provider = sdk(&go, "provider-1");
    let _r1 = provider.register(instance("app.svc", 9001)).await.unwrap();

    let first = sdk(&go, "consumer-1");
    let w = first.watch("app.svc").unwrap();
    assert_eq!(
        hostnames(&w.resolved(Duration::from_secs(2)).await),
        ["provider-1"]
    );
    parked(&go, "app.svc", 1).await;
    // The restart: the old client goes away, a new one with the same
    // hostname starts at once.
    drop(w);
    first.close().await.unwrap();
    let second = sdk(&go, "consumer-1");
    let w = second.watch("app.svc").unwrap();
    assert_eq!(
        hostnames(&w.resolved(Duration::from_secs(2)).await),
        ["provider-1"]
    );
    parked(&go, "app.svc", 1).await;

    let other = sdk(&go, "provider-2");
    let start = Instant::now();
    let _r2 = other.register(instance("app.svc", 9002)).await.unwrap();
    let mut rx = w.subscribe();
    wait_state(&mut rx, WELL_UNDER_HOLD, "second provider seen", |r| {
        hostnames(r).len() == 2
    })
    .await;
    println!("restarted watch: next change seen in {:?}", start.elapsed());
    let _ = tokio::join!(second.close(), provider.close(), other.close());
    go.shutdown().await;
}

/// Several SDK clients in one process share the process's hostname; each
/// watches its own apps and sees every change of them. Their registrations
/// keep the real hostname.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_sharing_a_hostname_each_see_every_change() {
    let go = go().await;
    let seed = sdk(&go, "seed");
    let _a0 = seed.register(instance("a.svc", 9000)).await.unwrap();
    let seed_b = sdk(&go, "seed-b");
    let _b0 = seed_b.register(instance("b.svc", 9000)).await.unwrap();

    let host = "shared-host";
    let (d1, d2, d3) = (sdk(&go, host), sdk(&go, host), sdk(&go, host));
    let w1a = d1.watch("a.svc").unwrap();
    let w2b = d2.watch("b.svc").unwrap();
    let w3a = d3.watch("a.svc").unwrap();
    let w3b = d3.watch("b.svc").unwrap();
    for w in [&w1a, &w2b, &w3a, &w3b] {
        assert_eq!(
            hostnames(&w.resolved(Duration::from_secs(2)).await).len(),
            1
        );
    }

    // Changes made by other clients in the same process: each is a
    // provider of the app the others watch.
    let mut worst = Duration::ZERO;
    parked(&go, "a.svc", 3).await;
    let ra = d2.register(instance("a.svc", 9101)).await.unwrap();
    for w in [&w1a, &w3a] {
        worst = worst.max(seen(w, "a.svc with shared-host", |r| hostnames(r).len() == 2).await);
    }
    assert_eq!(go.registered("a.svc").len(), 2);
    assert!(go.registered("a.svc").contains(&host.to_string()));

    parked(&go, "b.svc", 3).await;
    let rb = d1.register(instance("b.svc", 9102)).await.unwrap();
    for w in [&w2b, &w3b] {
        worst = worst.max(seen(w, "b.svc with shared-host", |r| hostnames(r).len() == 2).await);
    }

    parked(&go, "a.svc", 3).await;
    ra.cancel().await.unwrap();
    for w in [&w1a, &w3a] {
        worst = worst.max(seen(w, "a.svc back to one", |r| hostnames(r).len() == 1).await);
    }

    parked(&go, "b.svc", 3).await;
    rb.cancel().await.unwrap();
    for w in [&w2b, &w3b] {
        worst = worst.max(seen(w, "b.svc back to one", |r| hostnames(r).len() == 1).await);
    }
    println!("shared hostname: slowest watcher saw its change in {worst:?}");

    // Polls carry a per-client identity; registrations the real hostname.
    let poll_hosts: std::collections::BTreeSet<String> = go
        .poll_hostnames()
        .into_iter()
        .filter(|h| h.starts_with(host))
        .collect();
    println!("poll identities: {poll_hosts:?}");
    let ids: std::collections::BTreeSet<String> = [&d1, &d2, &d3]
        .iter()
        .map(|d| d.poll_identity().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "one poll identity per client");
    assert_eq!(poll_hosts, ids);
    let _ = tokio::join!(
        d1.close(),
        d2.close(),
        d3.close(),
        seed.close(),
        seed_b.close()
    );
    go.shutdown().await;
}
