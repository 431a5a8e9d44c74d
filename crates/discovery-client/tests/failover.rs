//! Node failover and self-discovery. Three independent in-process servers stand in for a cluster:
//! where a test needs "replicated" data it writes it into each registry.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{
    addr_of, config, dead_node, eventually, hostnames, instance, put, put_node, remove,
    remove_self, server, stored, timed, wait_state,
};
use discovery_client::{Config, Discovery};
use discovery_server::server::ServerHandle;
use naming::{DISCOVERY_APPID, Registry};

fn fast(nodes: &[String]) -> Config {
    let mut c = config(nodes);
    c.renew_interval = Duration::from_millis(300);
    c.backoff_base = Duration::from_millis(200);
    c.backoff_max = Duration::from_millis(800);
    c
}

/// Takes the server `d` currently talks to out of `servers`.
fn take_current(d: &Discovery, servers: &mut Vec<ServerHandle>) -> ServerHandle {
    let cur = d.current_node();
    let i = servers
        .iter()
        .position(|s| addr_of(s) == cur)
        .expect("current node is a server");
    servers.remove(i)
}

/// SDK side: with the consumer's node killed, the watch keeps
/// updating from another node.
#[tokio::test]
async fn watcher_survives_its_node_dying() {
    let mut servers = vec![server("").await, server("").await, server("").await];
    let nodes: Vec<String> = servers.iter().map(addr_of).collect();
    for s in &servers {
        put(s, "demo.svc", "p1", 9001);
    }
    let d = Discovery::new(fast(&nodes)).unwrap();
    let w = d.watch("demo.svc").unwrap();
    let mut rx = w.subscribe();
    wait_state(&mut rx, Duration::from_secs(2), "p1", |r| {
        hostnames(r) == ["p1"]
    })
    .await;
    let victim = take_current(&d, &mut servers);
    let victim_addr = addr_of(&victim);
    victim.shutdown().await;
    for s in &servers {
        put(s, "demo.svc", "p2", 9002);
    }
    let (_, took) = timed(wait_state(
        &mut rx,
        Duration::from_secs(5),
        "p2 after failover",
        |r| hostnames(r) == ["p1", "p2"],
    ))
    .await;
    println!("watcher updated {took:?} after its node died");
    assert_ne!(d.current_node(), victim_addr);
    d.close().await.unwrap();
    for s in servers {
        s.shutdown().await;
    }
}

/// Provider side: the provider's node dies; its next
/// renew fails over, the new node answers -404 (it never saw the instance,
/// having no replication here) and the SDK registers there at once.
#[tokio::test]
async fn provider_moves_to_another_node() {
    let mut servers = vec![server("").await, server("").await, server("").await];
    let nodes: Vec<String> = servers.iter().map(addr_of).collect();
    let d = Discovery::new(fast(&nodes)).unwrap();
    let reg = d.register(instance("prov.svc", 9000)).await.unwrap();
    let victim = take_current(&d, &mut servers);
    assert_eq!(stored(&victim, "prov.svc").len(), 1);
    victim.shutdown().await;
    let (_, took) = timed(eventually(
        Duration::from_secs(3),
        "registered elsewhere",
        || servers.iter().any(|s| stored(s, "prov.svc").len() == 1),
    ))
    .await;
    println!("provider registered on another node {took:?} after its node died");
    reg.cancel().await.unwrap();
    assert!(servers.iter().all(|s| stored(s, "prov.svc").is_empty()));
    for s in servers {
        s.shutdown().await;
    }
}

/// Own-zone `infra.discovery` records replace the node list,
/// removals included; other zones are ignored.
#[tokio::test]
async fn self_discovery_follows_infra_discovery() {
    let a = server("").await;
    let b = server("").await;
    put_node(&a, common::ZONE, "node-b", &addr_of(&b));
    put_node(&a, "zone-far", "node-far", "10.255.255.1:7171");
    let mut c = fast(&[addr_of(&a)]);
    c.self_discovery = true;
    let d = Discovery::new(c).unwrap();
    assert!(d.ready(Duration::from_secs(3)).await);
    let want: BTreeSet<String> = [addr_of(&a), addr_of(&b)].into();
    eventually(Duration::from_secs(2), "both nodes learned", || {
        d.nodes().into_iter().collect::<BTreeSet<_>>() == want
    })
    .await;
    // B leaves the cluster: it is dropped from the list at the next update.
    // (The client may be polling B itself, which does not list B's
    // removal; remove it on both.)
    remove(&a, DISCOVERY_APPID, "node-b");
    remove_self(&b);
    let (_, took) = timed(eventually(Duration::from_secs(5), "B removed", || {
        !d.nodes().contains(&addr_of(&b))
    }))
    .await;
    println!("removed node dropped from the list after {took:?}");
    d.close().await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
}

/// When every discovered node is down, the configured seed is
/// tried again after as many failures as there are listed nodes.
#[tokio::test]
async fn dead_discovered_nodes_fall_back_to_the_seed() {
    let seed = server("").await;
    let (x, y) = (dead_node(), dead_node());
    remove_self(&seed);
    put_node(&seed, common::ZONE, "dead-x", &x);
    put_node(&seed, common::ZONE, "dead-y", &y);
    let mut c = fast(&[addr_of(&seed)]);
    c.self_discovery = true;
    let d = Discovery::new(c).unwrap();
    assert!(d.ready(Duration::from_secs(3)).await);
    put(&seed, "demo.svc", "p1", 9000);
    let w = d.watch("demo.svc").unwrap();
    let mut rx = w.subscribe();
    let (_, took) = timed(wait_state(
        &mut rx,
        Duration::from_secs(5),
        "found via the seed",
        |r| hostnames(r) == ["p1"],
    ))
    .await;
    println!("seed reached again {took:?} after the discovered nodes failed");
    d.close().await.unwrap();
    seed.shutdown().await;
}
