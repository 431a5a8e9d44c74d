//! Peers that die or fall silent: no caller's deadline is spent finding out.
//!
//! A silent peer (here a proxy that stops moving bytes, as a SIGSTOPped
//! process or a blackholed address would) is found by HTTP/2 keepalive and
//! ejected; meanwhile calls of idempotent methods are hedged on another
//! endpoint, so none fails. Timings are printed, not asserted tightly.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, BalancerKind, ClientConfig};
use support::{Behaviour, Ep, Freezer, TestServer, ep, fake, found, hello, wait_ready};
use tokio::time::Instant;

const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

fn config(kind: BalancerKind) -> ClientConfig {
    ClientConfig::default().balancer(kind).idempotent(SAY_HELLO)
}

/// Waits until `addr` is ejected, at most `within`; how long it took.
async fn until_ejected(ch: &Balanced, addr: &str, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if ch.ejected_endpoints().iter().any(|a| a == addr) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn picks(ch: &Balanced, addr: &str) -> u64 {
    ch.pool()
        .backends
        .iter()
        .find(|b| b.addr == addr)
        .map_or(0, |b| b.picks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_silent_peer_is_ejected_before_any_call() {
    let servers: Vec<TestServer> = (0..2)
        .map(|_| TestServer::start(Behaviour::default()))
        .collect();
    let proxy = Freezer::start(servers[1].addr).await;
    let (resolver, _tx) = fake(found(&[ep(servers[0].addr), ep(proxy.addr)]));
    let channel = Balanced::new(resolver, &config(BalancerKind::P2c)).unwrap();
    wait_ready(&channel, 2).await;
    let silent = proxy.addr.to_string();
    proxy.freeze(true);
    let took = until_ejected(&channel, &silent, Duration::from_secs(10)).await;
    println!("idle silent peer ejected by keepalive after {took:?} (interval 1 s, timeout 1 s)");
    assert!(took.is_some(), "never ejected: {:?}", channel.pool());
    assert_eq!(picks(&channel, &silent), 0, "found without a call");
    // The probe's fresh connection is accepted but never answered, so the
    // endpoint stays out. Fixed: a second in which it must not come back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        channel.ejected_endpoints().contains(&silent),
        "re-admitted while silent: {:?}",
        channel.pool()
    );
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..20 {
        client
            .say_hello(hello())
            .await
            .expect("the other one answers");
    }
    assert_eq!(picks(&channel, &silent), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotency_switch_decides_whether_a_silent_peer_costs_calls() {
    let servers: Vec<TestServer> = (0..2)
        .map(|_| TestServer::start(Behaviour::default()))
        .collect();
    let proxy = Freezer::start(servers[1].addr).await;
    let eps = [ep(servers[0].addr), ep(proxy.addr)];
    // Static wrr alternates, so two calls reach the silent peer once each;
    // a long keepalive keeps it in the pool for the whole test.
    let base = ClientConfig::default()
        .balancer(BalancerKind::Wrr)
        .static_weights(true)
        .keepalive(Duration::from_secs(60), Duration::from_secs(20));
    let (r1, _t1) = fake(found(&eps));
    let plain = Balanced::new(r1, &base).unwrap();
    let (r2, _t2) = fake(found(&eps));
    let hedged = Balanced::new(r2, &base.clone().idempotent(SAY_HELLO)).unwrap();
    wait_ready(&plain, 2).await;
    wait_ready(&hedged, 2).await;
    proxy.freeze(true);
    let mut failed = Vec::new();
    for ch in [&plain, &hedged] {
        let mut client = GreeterClient::new(ch.clone());
        let mut n = 0;
        for _ in 0..4 {
            if let Err(s) = client.say_hello(hello()).await {
                assert_eq!(s.code(), tonic::Code::DeadlineExceeded, "{s:?}");
                n += 1;
            }
        }
        failed.push(n);
    }
    println!("4 calls with one of two peers silent: failed {failed:?} (plain, idempotent)");
    assert_eq!(failed, [2, 0]);
    assert_eq!(hedged.pool().hedged_calls, 2);
}

/// Callers at a steady pace against three servers, one behind a proxy that
/// falls silent (or, with `kill`, a fourth server killed outright).
async fn fault_under_load(kind: BalancerKind, kill: bool) {
    let mut servers: Vec<TestServer> = (0..3)
        .map(|_| TestServer::start(Behaviour::default()))
        .collect();
    let proxy = Freezer::start(servers[2].addr).await;
    let mut eps: Vec<Ep> = vec![ep(servers[0].addr), ep(servers[1].addr), ep(proxy.addr)];
    let victim_server = kill.then(|| TestServer::start(Behaviour::default()));
    if let Some(v) = &victim_server {
        eps.push(ep(v.addr));
    }
    let victim = match &victim_server {
        Some(v) => v.addr.to_string(),
        None => proxy.addr.to_string(),
    };
    let (resolver, _tx) = fake(found(&eps));
    let channel = Balanced::new(resolver, &config(kind)).unwrap();
    wait_ready(&channel, eps.len()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, failed, ok) = (stop.clone(), failed.clone(), ok.clone());
        let mut client = GreeterClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.say_hello(hello()).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(s) => {
                        failed
                            .lock()
                            .push(format!("{:?} {}", s.code(), s.message()));
                        0
                    }
                };
                // Fixed: paces the load.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    // Fixed: a second of steady load, for the picker's statistics, before
    // the fault.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = picks(&channel, &victim);
    assert!(before > 0, "the victim took no calls before the fault");
    let at = Instant::now();
    match victim_server {
        Some(v) => v.kill(),
        None => proxy.freeze(true),
    }
    let ejected = until_ejected(&channel, &victim, Duration::from_secs(10)).await;
    let picks_at_ejection = picks(&channel, &victim);
    // Fixed: 2 s of load in which the ejected victim must get no pick.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let pool = channel.pool();
    let failed = failed.lock().clone();
    println!(
        "{kind:?} {}: {} calls, {} failed; ejected {:?} after the fault; {} picks of it between \
         fault and ejection; hedged {}, retried {}",
        if kill { "kill" } else { "silent peer" },
        ok.load(Ordering::Relaxed) + failed.len(),
        failed.len(),
        ejected,
        picks_at_ejection - before,
        pool.hedged_calls,
        pool.retried_calls
    );
    assert!(failed.is_empty(), "failed calls: {failed:?}");
    assert!(ejected.is_some(), "never ejected: {pool:?}");
    assert!(at.elapsed() > Duration::from_secs(2));
    drop(servers.drain(..));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_silent_peer_under_load_fails_no_call() {
    fault_under_load(BalancerKind::P2c, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrr_silent_peer_under_load_fails_no_call() {
    fault_under_load(BalancerKind::Wrr, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_kill_under_load_fails_no_call() {
    fault_under_load(BalancerKind::P2c, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrr_kill_under_load_fails_no_call() {
    fault_under_load(BalancerKind::Wrr, true).await;
}
