//! Long-poll scenarios of the SDK, each against the Go original's rules
//! (`testkit::go_double`: one waiter per (appid, poll hostname) shared by
//! every poll with that hostname, a 30 s hold, the Go answer shapes) and
//! against our own server (`_ours`), both holding polls for 30 s.

mod common;

use std::time::{Duration, Instant};

use common::{hostnames, instance, wait_state};
use discovery_client::{Config, Discovery};
use discovery_server::server::ServerHandle;
use naming::{Registry, Resolution};
use testkit::go_double::{GoDouble, GoDoubleConfig};

/// Anything near this means a change waited for the hold to end.
const WELL_UNDER_HOLD: Duration = Duration::from_secs(3);

/// The registry under test.
enum Node {
    Go(GoDouble),
    Ours(ServerHandle),
}

impl Node {
    /// Both hold a poll 30 s: a missed wake-up cannot hide.
    async fn go() -> Node {
        Node::Go(GoDouble::start(GoDoubleConfig::default()).await)
    }

    async fn ours() -> Node {
        Node::Ours(common::server("poll_hold = \"30s\"").await)
    }

    fn name(&self) -> &'static str {
        match self {
            Node::Go(_) => "go double",
            Node::Ours(_) => "our server",
        }
    }

    fn addr(&self) -> String {
        match self {
            Node::Go(g) => g.addr().to_string(),
            Node::Ours(s) => s.addr().to_string(),
        }
    }

    fn held_polls(&self) -> usize {
        match self {
            Node::Go(g) => g.held_polls(),
            Node::Ours(s) => s.registry().parked_polls(),
        }
    }

    fn registered(&self, appid: &str) -> Vec<String> {
        match self {
            Node::Go(g) => g.registered(appid),
            Node::Ours(s) => common::stored(s, appid)
                .into_iter()
                .map(|i| i.hostname)
                .collect(),
        }
    }

    /// The `hostname` of every poll so far (the double records them).
    fn poll_hostnames(&self) -> Option<Vec<String>> {
        match self {
            Node::Go(g) => Some(g.poll_hostnames()),
            Node::Ours(_) => None,
        }
    }

    async fn shutdown(self) {
        match self {
            Node::Go(g) => g.shutdown().await,
            Node::Ours(s) => s.shutdown().await,
        }
    }
}

fn sdk(node: &Node, hostname: &str) -> Discovery {
    let mut c: Config = common::config(&[node.addr()]);
    c.hostname = hostname.into();
    Discovery::new(c).unwrap()
}

/// Waits until `polls` polls are held, i.e. a change must wake them.
async fn parked(node: &Node, polls: usize) {
    common::eventually(Duration::from_secs(5), "polls held", || {
        node.held_polls() >= polls
    })
    .await;
}

/// Waits for `pred`; returns the time since `start` (the change's request).
async fn seen(
    w: &discovery_client::Watch,
    start: Instant,
    what: &str,
    pred: impl FnMut(&Resolution) -> bool,
) -> Duration {
    let mut rx = w.subscribe();
    wait_state(&mut rx, WELL_UNDER_HOLD, what, pred).await;
    start.elapsed()
}

/// [`seen`] by each of `watches`; returns the slowest.
async fn seen_by_all(
    watches: &[&discovery_client::Watch],
    start: Instant,
    what: &str,
    pred: impl Fn(&Resolution) -> bool + Copy,
) -> Duration {
    let mut worst = Duration::ZERO;
    for w in watches {
        worst = worst.max(seen(w, start, what, pred).await);
    }
    worst
}

/// A watch started before its provider existed sees the provider as soon
/// as it registers, not at the end of the 30 s hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_before_provider_sees_it_at_once() {
    consumer_before_provider(Node::go().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_before_provider_sees_it_at_once_ours() {
    consumer_before_provider(Node::ours().await).await;
}

async fn consumer_before_provider(go: Node) {
    let consumer = sdk(&go, "consumer-1");
    let w = consumer.watch("late.svc").unwrap();
    assert!(matches!(
        w.resolved(Duration::from_secs(2)).await.expect("resolved"),
        Resolution::NotFound { .. }
    ));
    parked(&go, 1).await;

    let provider = sdk(&go, "provider-1");
    let start = Instant::now();
    let reg = provider.register(instance("late.svc", 9000)).await.unwrap();
    let took = seen(&w, start, "provider seen", |r| {
        hostnames(r) == ["provider-1"]
    })
    .await;
    println!(
        "{}: consumer before provider: provider seen {took:?} after its register started",
        go.name()
    );
    reg.cancel().await.unwrap();
    let _ = tokio::join!(consumer.close(), provider.close());
    go.shutdown().await;
}

/// A watch restarted under the same hostname (a restarted process keeps its
/// HOSTNAME) sees the next change at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_watch_under_the_same_hostname_sees_the_next_change() {
    restarted_watch(Node::go().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_watch_under_the_same_hostname_sees_the_next_change_ours() {
    restarted_watch(Node::ours().await).await;
}

async fn restarted_watch(go: Node) {
    let provider = sdk(&go, "provider-1");
    let _r1 = provider.register(instance("app.svc", 9001)).await.unwrap();

    let first = sdk(&go, "consumer-1");
    let w = first.watch("app.svc").unwrap();
    assert_eq!(
        hostnames(&w.resolved(Duration::from_secs(2)).await.expect("resolved")),
        ["provider-1"]
    );
    parked(&go, 1).await;
    // The restart: the old client goes away, a new one with the same
    // hostname starts at once.
    drop(w);
    first.close().await.unwrap();
    let second = sdk(&go, "consumer-1");
    let w = second.watch("app.svc").unwrap();
    assert_eq!(
        hostnames(&w.resolved(Duration::from_secs(2)).await.expect("resolved")),
        ["provider-1"]
    );
    parked(&go, 1).await;

    let other = sdk(&go, "provider-2");
    let start = Instant::now();
    let _r2 = other.register(instance("app.svc", 9002)).await.unwrap();
    let took = seen(&w, start, "second provider seen", |r| {
        hostnames(r).len() == 2
    })
    .await;
    println!(
        "{}: restarted watch: next change seen in {took:?}",
        go.name()
    );
    let _ = tokio::join!(second.close(), provider.close(), other.close());
    go.shutdown().await;
}

/// Several SDK clients in one process share the process's hostname; each
/// watches its own apps and sees every change of them. Their registrations
/// keep the real hostname.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_sharing_a_hostname_each_see_every_change() {
    shared_hostname(Node::go().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_sharing_a_hostname_each_see_every_change_ours() {
    shared_hostname(Node::ours().await).await;
}

async fn shared_hostname(go: Node) {
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
            hostnames(&w.resolved(Duration::from_secs(2)).await.expect("resolved")).len(),
            1
        );
    }

    // Changes made by other clients in the same process: each is a
    // provider of the app the others watch.
    let mut worst = Duration::ZERO;
    parked(&go, 3).await;
    let start = Instant::now();
    let ra = d2.register(instance("a.svc", 9101)).await.unwrap();
    let two = |r: &Resolution| hostnames(r).len() == 2;
    let one = |r: &Resolution| hostnames(r).len() == 1;
    worst = worst.max(seen_by_all(&[&w1a, &w3a], start, "a.svc with shared-host", two).await);
    assert_eq!(go.registered("a.svc").len(), 2);
    assert!(go.registered("a.svc").contains(&host.to_string()));

    parked(&go, 3).await;
    let start = Instant::now();
    let rb = d1.register(instance("b.svc", 9102)).await.unwrap();
    worst = worst.max(seen_by_all(&[&w2b, &w3b], start, "b.svc with shared-host", two).await);

    parked(&go, 3).await;
    let start = Instant::now();
    ra.cancel().await.unwrap();
    worst = worst.max(seen_by_all(&[&w1a, &w3a], start, "a.svc back to one", one).await);

    parked(&go, 3).await;
    let start = Instant::now();
    rb.cancel().await.unwrap();
    worst = worst.max(seen_by_all(&[&w2b, &w3b], start, "b.svc back to one", one).await);
    println!(
        "{}: shared hostname: slowest watcher saw its change in {worst:?}",
        go.name()
    );

    // Polls carry a per-client identity; registrations the real hostname.
    let ids: std::collections::BTreeSet<String> = [&d1, &d2, &d3]
        .iter()
        .map(|d| d.poll_identity().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "one poll identity per client");
    if let Some(seen) = go.poll_hostnames() {
        let seen: std::collections::BTreeSet<String> =
            seen.into_iter().filter(|h| h.starts_with(host)).collect();
        println!("poll identities: {seen:?}");
        assert_eq!(seen, ids);
    }
    let _ = tokio::join!(
        d1.close(),
        d2.close(),
        d3.close(),
        seed.close(),
        seed_b.close()
    );
    go.shutdown().await;
}

/// Go ends every hold with `-304` and no data: the SDK polls on, and a
/// change after several hold ends is still seen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_ends_are_tolerated() {
    let go = GoDouble::start(GoDoubleConfig {
        hold: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let node = Node::Go(go);
    let provider = sdk(&node, "provider-1");
    let _r1 = provider.register(instance("app.svc", 9001)).await.unwrap();
    let consumer = sdk(&node, "consumer-1");
    let w = consumer.watch("app.svc").unwrap();
    assert_eq!(
        hostnames(&w.resolved(Duration::from_secs(2)).await.expect("resolved")),
        ["provider-1"]
    );
    let polls = || {
        node.poll_hostnames()
            .unwrap_or_default()
            .iter()
            .filter(|h| h.starts_with("consumer-1#"))
            .count()
    };
    let before = polls();
    common::eventually(Duration::from_secs(5), "three hold ends", || {
        polls() >= before + 3
    })
    .await;
    parked(&node, 1).await;
    let start = Instant::now();
    let _r2 = sdk(&node, "provider-2")
        .register(instance("app.svc", 9002))
        .await
        .unwrap();
    let took = seen(&w, start, "second provider", |r| hostnames(r).len() == 2).await;
    println!("after three hold ends: change seen in {took:?}");
    assert_eq!(
        hostnames(&w.current()),
        ["provider-1", "provider-2"],
        "nothing lost across the -304s"
    );
    let _ = consumer.close().await;
    node.shutdown().await;
}

/// The Go original wakes no poller when an app's last instance is
/// cancelled: the watch learns it from one `fetchs` after the hold that
/// brought nothing, so within the hold plus a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_cancel_of_an_app_is_seen_within_a_hold_on_a_go_server() {
    let hold = Duration::from_secs(2);
    let go = Node::Go(
        GoDouble::start(GoDoubleConfig {
            hold,
            ..GoDoubleConfig::default()
        })
        .await,
    );
    let provider = sdk(&go, "provider-1");
    let reg = provider.register(instance("last.svc", 9000)).await.unwrap();
    let consumer = sdk(&go, "consumer-1");
    let w = consumer.watch("last.svc").unwrap();
    assert_eq!(
        hostnames(&w.resolved(Duration::from_secs(2)).await.expect("resolved")),
        ["provider-1"]
    );
    parked(&go, 1).await;
    let start = Instant::now();
    reg.cancel().await.unwrap();
    let mut rx = w.subscribe();
    wait_state(
        &mut rx,
        hold + Duration::from_secs(1),
        "the last cancel seen",
        |r| matches!(r, Resolution::NotFound { .. }),
    )
    .await;
    println!(
        "last cancel seen {:?} after it, hold {hold:?}",
        start.elapsed()
    );
    let _ = tokio::join!(consumer.close(), provider.close());
    go.shutdown().await;
}
