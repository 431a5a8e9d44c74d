//! A provider and a consumer on the SDK against a real replicated 3-node
//! cluster (testkit): they survive the death of one node and a restart of
//! it, and a cancel on shutdown reaches the other consumer.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{config, hostnames, instance, timed, wait_state};
use discovery_client::Discovery;
use naming::Registry;
use testkit::{FAST, Layout, Topology};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_one_of_three_nodes_dying_and_restarting() {
    let mut topo = Topology::start(&Layout::zones(&[(common::ZONE, 3)]).toml(FAST)).await;
    topo.wait_ready().await;
    let addrs: Vec<String> = (0..3).map(|i| topo.addr(i).to_string()).collect();
    let sdk = |seed: usize| {
        let mut c = config(&[addrs[seed].clone()]);
        c.self_discovery = true;
        c.renew_interval = Duration::from_millis(500);
        c.backoff_base = Duration::from_millis(200);
        c.backoff_max = Duration::from_secs(1);
        Discovery::new(c).unwrap()
    };
    let provider = sdk(0);
    let consumer = sdk(1);
    assert!(consumer.ready(Duration::from_secs(3)).await);
    assert!(provider.ready(Duration::from_secs(3)).await);
    assert_eq!(consumer.nodes().len(), 3, "{:?}", consumer.nodes());

    let p = provider.config().hostname.clone();
    let reg = provider.register(instance("demo.svc", 9000)).await.unwrap();
    let w = consumer.watch("demo.svc").unwrap();
    let mut rx = w.subscribe();
    wait_state(&mut rx, Duration::from_secs(2), "provider seen", |r| {
        hostnames(r) == [p.clone()]
    })
    .await;

    // Watch for the instance ever vanishing (an eviction) from here on.
    let lost = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (lost, mut rx, p) = (lost.clone(), w.subscribe(), p.clone());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                if !hostnames(&rx.borrow_and_update()).contains(&p) {
                    lost.store(true, Ordering::SeqCst);
                }
            }
        })
    };

    // Kill the provider's node, then the consumer's (if another one).
    let by_addr = |a: String| addrs.iter().position(|x| *x == a).unwrap();
    let victim = by_addr(provider.current_node());
    topo.stop(victim).await;
    // Fixed: longer than the 3 s lease, so that only renews reaching the
    // survivors keep the instance.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c_node = by_addr(consumer.current_node());
    let second = if c_node == victim { None } else { Some(c_node) };
    topo.restart(victim).await;
    if let Some(i) = second {
        topo.stop(i).await;
    }
    let other = sdk(victim);
    let q = other.config().hostname.clone();
    let mut both = vec![p.clone(), q.clone()];
    both.sort();
    let (reg2, took) = timed(async {
        let reg2 = other.register(instance("demo.svc", 9001)).await.unwrap();
        wait_state(&mut rx, Duration::from_secs(5), "second provider", |r| {
            let mut h = hostnames(r);
            h.sort();
            h == both
        })
        .await;
        reg2
    })
    .await;
    println!("register → consumer update after the consumer's node went down: {took:?}");
    assert!(
        !lost.load(Ordering::SeqCst),
        "the live provider vanished from the consumer's view"
    );
    if let Some(i) = second {
        topo.restart(i).await;
    }

    // Cancel on shutdown reaches the consumer.
    let (_, took) = timed(async {
        provider.close().await.unwrap();
        wait_state(&mut rx, Duration::from_secs(3), "provider gone", |r| {
            hostnames(r) == [q.clone()]
        })
        .await;
    })
    .await;
    println!("provider close → consumer update: {took:?}");
    drop(reg);
    monitor.abort();
    reg2.cancel().await.unwrap();
    other.close().await.unwrap();
    consumer.close().await.unwrap();
    topo.shutdown().await;
}
