//! The consumer side against real servers: first resolves take one round trip, never a long-poll hold.

mod common;

use std::{sync::Arc, time::Duration};

use common::{
    addr_of, client, config, dead_node, eventually, hostnames, instance, put, server, server_at,
    timed, wait_state,
};
use discovery_client::{Discovery, SetRequest};
use naming::{BuildOptions, Builder, Registry, Resolution, Resolver, Status};

/// Servers of these tests hold polls for the full 30 s, so a first resolve
/// that waited for a hold would take 30 s.
const LONG_HOLD: &str = "poll_hold = \"30s\"";

/// Waits until the server holds `n` polls (the client's loop is parked).
async fn parked(s: &discovery_server::server::ServerHandle, n: usize) {
    eventually(Duration::from_secs(5), "poll parked", || {
        s.registry().parked_polls() == n
    })
    .await;
}

/// The first resolve of a registered app returns `Found` in
/// one round trip although the client's poll is parked for 30 s.
#[tokio::test]
async fn first_resolve_of_a_registered_app_is_fast() {
    let s = server(LONG_HOLD).await;
    put(&s, "demo.svc", "p1", 9000);
    let d = client(&[addr_of(&s)]);
    // Let the loop park its poll on infra.discovery first: the worst case.
    parked(&s, 1).await;
    let (r, took) = timed(async {
        let w = d.watch("demo.svc").unwrap();
        w.resolved(Duration::from_secs(5)).await.expect("resolved")
    })
    .await;
    println!("first resolve of a registered app (poll parked): {took:?}");
    assert_eq!(hostnames(&r), ["p1"]);
    assert!(took < Duration::from_secs(1), "first resolve took {took:?}");

    // Right after `new`, before any poll answered.
    let d2 = client(&[addr_of(&s)]);
    let (r, took) = timed(async {
        let w = d2.watch("demo.svc").unwrap();
        w.resolved(Duration::from_secs(5)).await.expect("resolved")
    })
    .await;
    println!("first resolve of a registered app (fresh client): {took:?}");
    assert_eq!(hostnames(&r), ["p1"]);
    assert!(took < Duration::from_secs(1), "first resolve took {took:?}");
    d.close().await.unwrap();
    d2.close().await.unwrap();
    s.shutdown().await;
}

/// A second appid while a poll is parked resolves at
/// once, and one polls request carries both afterwards.
#[tokio::test]
async fn second_appid_while_a_poll_is_parked() {
    let s = server(LONG_HOLD).await;
    put(&s, "demo.a", "a1", 9000);
    put(&s, "demo.b", "b1", 9001);
    let d = client(&[addr_of(&s)]);
    let a = d.watch("demo.a").unwrap();
    assert_eq!(
        hostnames(&a.resolved(Duration::from_secs(5)).await.expect("resolved")),
        ["a1"]
    );
    parked(&s, 1).await;
    let (r, took) = timed(async {
        let b = d.watch("demo.b").unwrap();
        let r = b.resolved(Duration::from_secs(5)).await.expect("resolved");
        (r, b)
    })
    .await;
    println!("second appid while a poll is parked: {took:?}");
    assert_eq!(hostnames(&r.0), ["b1"]);
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The restarted poll parks again: still one request for both apps.
    parked(&s, 1).await;
    put(&s, "demo.a", "a2", 9002);
    let mut rx = a.subscribe();
    wait_state(&mut rx, Duration::from_secs(2), "a2", |r| {
        hostnames(r).len() == 2
    })
    .await;
    d.close().await.unwrap();
    s.shutdown().await;
}

/// An unknown appid is `NotFound { appid, env }` at
/// once; its first register is delivered within a second.
#[tokio::test]
async fn unknown_appid_is_not_found_then_found_on_register() {
    let s = server(LONG_HOLD).await;
    let d = client(&[addr_of(&s)]);
    let (r, took) = timed(async {
        let w = d.watch("ghost.svc").unwrap();
        (
            w.resolved(Duration::from_secs(5)).await.expect("resolved"),
            w,
        )
    })
    .await;
    println!("unknown appid → NotFound after {took:?}");
    let (r, w) = r;
    assert_eq!(
        r,
        Resolution::NotFound {
            appid: "ghost.svc".into(),
            env: "dev".into()
        }
    );
    assert!(took < Duration::from_secs(1), "{took:?}");
    parked(&s, 1).await;
    let provider = client(&[addr_of(&s)]);
    let mut rx = w.subscribe();
    let (reg, took) = timed(async {
        let reg = provider
            .register(instance("ghost.svc", 9000))
            .await
            .unwrap();
        wait_state(
            &mut rx,
            Duration::from_secs(1),
            "found after register",
            |r| r.found().is_some(),
        )
        .await;
        reg
    })
    .await;
    println!("NotFound → Found after the first register: {took:?}");
    reg.cancel().await.unwrap();
    d.close().await.unwrap();
    s.shutdown().await;
}

/// Register, set, cancel and eviction reach watchers
/// within a second; the last instance leaving gives `Found` with zero
/// instances.
#[tokio::test]
async fn watchers_see_register_set_cancel_and_eviction() {
    let s = server(
        "poll_hold = \"30s\"\nlease = \"1s\"\nevict_interval = \"200ms\"\nrenew_interval = \"250ms\"\nself_preservation = false",
    )
    .await;
    let consumer = client(&[addr_of(&s)]);
    let w = consumer.watch("demo.svc").unwrap();
    let mut rx = w.subscribe();
    assert!(matches!(
        w.resolved(Duration::from_secs(2)).await.expect("resolved"),
        Resolution::NotFound { .. }
    ));

    let mk = |renew_ms| {
        let mut c = config(&[addr_of(&s)]);
        c.renew_interval = Duration::from_millis(renew_ms);
        Discovery::new(c).unwrap()
    };
    let (p1, p2) = (mk(250), mk(250));
    let h1 = p1.config().hostname.clone();
    let h2 = p2.config().hostname.clone();
    let mut delays = Vec::new();

    let (r1, t) = timed(p1.register(instance("demo.svc", 9001))).await;
    let r1 = r1.unwrap();
    let (_, t2) = timed(wait_state(&mut rx, Duration::from_secs(1), "p1", |r| {
        hostnames(r) == [h1.clone()]
    }))
    .await;
    delays.push(("register", t + t2));

    let r2 = p2.register(instance("demo.svc", 9002)).await.unwrap();
    let mut both = vec![h1.clone(), h2.clone()];
    both.sort();
    wait_state(&mut rx, Duration::from_secs(1), "p1+p2", |r| {
        let mut h = hostnames(r);
        h.sort();
        h == both
    })
    .await;

    // `set` to waiting takes p2 out of the UP set the poll delivers.
    let (_, t) = timed(async {
        p2.set(
            "demo.svc",
            SetRequest {
                status: Some(Status::Waiting),
                metadata: None,
            },
        )
        .await
        .unwrap();
        wait_state(&mut rx, Duration::from_secs(1), "p2 waiting", |r| {
            hostnames(r) == [h1.clone()]
        })
        .await;
    })
    .await;
    delays.push(("set", t));
    r2.cancel().await.unwrap();

    // An instance nobody renews is evicted after the 1 s lease.
    put(&s, "demo.svc", "orphan", 9003);
    wait_state(&mut rx, Duration::from_secs(1), "orphan", |r| {
        hostnames(r).len() == 2
    })
    .await;
    wait_state(&mut rx, Duration::from_secs(3), "orphan evicted", |r| {
        hostnames(r) == [h1.clone()]
    })
    .await;

    // The last instance leaving: Found with zero instances.
    let (_, t) = timed(async {
        r1.cancel().await.unwrap();
        wait_state(&mut rx, Duration::from_secs(1), "empty", |r| {
            r.found().is_some_and(|i| i.is_empty())
        })
        .await;
    })
    .await;
    delays.push(("cancel", t));
    println!("change propagation (provider call → watcher): {delays:?}");
    consumer.close().await.unwrap();
    s.shutdown().await;
}

/// A registry that is down at start never blocks: the watch stays
/// `Pending` for the caller's bound (`resolved` then answers a timeout
/// error), and the loop keeps retrying until the
/// registry comes up.
#[tokio::test]
async fn registry_down_at_start_stays_pending_then_recovers() {
    let node = dead_node();
    let d = client(std::slice::from_ref(&node));
    let w = d.watch("demo.svc").unwrap();
    let (r, took) = timed(w.resolved(Duration::from_millis(500))).await;
    assert!(
        matches!(r, Err(naming::Error::Timeout(_))),
        "a timeout is an error, not a wait: {r:?}"
    );
    assert_eq!(w.current(), Resolution::Pending);
    assert!(took < Duration::from_millis(800), "{took:?}");
    let s = server_at("", node.parse().unwrap()).await;
    put(&s, "demo.svc", "late", 9000);
    let mut rx = w.subscribe();
    // Backoff after a failure is at most 1.2 s at first, then 2.4 s…
    let (_, took) = timed(wait_state(
        &mut rx,
        Duration::from_secs(8),
        "found once up",
        |r| r.found().is_some(),
    ))
    .await;
    println!("found {took:?} after the registry came up");
    d.close().await.unwrap();
    s.shutdown().await;
}

/// The SDK as `discovery-tonic` sees it: an `Arc<dyn Builder>` for the
/// `discovery` scheme building `Box<dyn Resolver>`s of raw snapshots.
#[tokio::test]
async fn builder_and_resolver_traits() {
    let s = server(LONG_HOLD).await;
    put(&s, "demo.svc", "p1", 9000);
    let d = client(&[addr_of(&s)]);
    let builder: Arc<dyn Builder> = Arc::new(d.clone());
    assert_eq!(builder.scheme(), "discovery");
    let options = BuildOptions {
        clusters: vec!["c1".into()],
        ..Default::default()
    };
    let resolver: Box<dyn Resolver> = builder.build("demo.svc", options).unwrap();
    assert_eq!(resolver.appid(), "demo.svc");
    let mut rx = resolver.watch();
    let r = wait_state(&mut rx, Duration::from_secs(1), "found", |r| {
        r.found().is_some()
    })
    .await;
    // Raw snapshot: no filtering by the SDK (p1 has no cluster c1).
    assert_eq!(hostnames(&r), ["p1"]);
    assert_eq!(resolver.fetch().unwrap().len(), 1);
    // A second resolver of the same appid starts from the cached state.
    let again = builder.build("demo.svc", BuildOptions::default()).unwrap();
    assert_eq!(hostnames(&again.watch().borrow()), ["p1"]);
    drop(builder);
    drop(d);
    // The resolvers keep the client alive.
    put(&s, "demo.svc", "p2", 9001);
    wait_state(&mut rx, Duration::from_secs(1), "p2", |r| {
        hostnames(r).len() == 2
    })
    .await;
    resolver.close();
    drop(again);
    s.shutdown().await;
}
