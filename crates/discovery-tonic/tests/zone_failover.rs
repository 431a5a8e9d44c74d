//! Zone preference is a preference, not a wall: when every endpoint of the
//! client's zone fails its dial or its connection, calls go to the other
//! zones at once instead of waiting for the registry to drop the dead
//! instances (a lease, up to 90 s), and come home as soon as a local
//! endpoint answers again.
//!
//! The registry here keeps listing the dead servers, as it does after a
//! `kill -9`: only the balancer's own view of its connections can move the
//! traffic.

mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, BalancerKind, ClientConfig, ServedBy};
use support::{Behaviour, TestServer, dead_addr, ep, eventually, fake, found_in, hello};
use tokio::{task::JoinHandle, time::Instant};

const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";
const LOCAL: &str = "sh001";
const OTHER: &str = "sh002";

fn config(kind: BalancerKind) -> ClientConfig {
    // A deadline well above a loaded machine's scheduling hiccups: a call
    // that fails here fails because of the balancer, not the CPU.
    ClientConfig::default()
        .balancer(kind)
        .zone(LOCAL)
        .idempotent(SAY_HELLO)
        .timeout(Duration::from_secs(1))
}

/// Callers at a steady pace until stopped; every failure is kept.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<parking_lot::Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(channel: &Balanced, callers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let tasks = (0..callers)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let mut client = GreeterClient::new(channel.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match client.say_hello(hello()).await {
                            Ok(_) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(s) => failed
                                .lock()
                                .push(format!("{:?} {}", s.code(), s.message())),
                        }
                        // Fixed: paces the load.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Stops the callers; (successful calls, failures).
    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failed = self.failed.lock().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

/// Who served one call.
async fn served_by(client: &mut GreeterClient<Balanced>) -> Option<String> {
    let resp = client.say_hello(hello()).await.ok()?;
    resp.extensions().get::<ServedBy>().map(|s| s.addr.clone())
}

/// Two servers per zone; both local ones die without a goodbye (their
/// runtime stops, closing listener and connections, as `kill -9` does)
/// while callers run; one comes back on its address.
async fn kill_the_local_zone(kind: BalancerKind) {
    let local: Vec<TestServer> = (0..2)
        .map(|_| TestServer::start(Behaviour::default()))
        .collect();
    let other: Vec<TestServer> = (0..2)
        .map(|_| TestServer::start(Behaviour::default()))
        .collect();
    let local_eps: Vec<_> = local.iter().map(|s| ep(s.addr)).collect();
    let other_eps: Vec<_> = other.iter().map(|s| ep(s.addr)).collect();
    let (resolver, _tx) = fake(found_in(&[(LOCAL, &local_eps), (OTHER, &other_eps)]));
    let channel = Balanced::new(resolver, &config(kind)).unwrap();
    let other_hits = || other.iter().map(TestServer::hits).sum::<usize>();
    // Calls made while the local endpoints still dial may go elsewhere.
    eventually(
        Duration::from_secs(20),
        "both local endpoints connect",
        || {
            let ready = channel.ready_endpoints();
            local.iter().all(|s| ready.contains(&s.addr.to_string()))
        },
    )
    .await;

    let load = Load::start(&channel, 4);
    eventually(
        Duration::from_secs(20),
        "both local servers take calls",
        || local.iter().all(|s| s.hits() >= 20),
    )
    .await;
    assert_eq!(
        other_hits(),
        0,
        "the other zone got calls while ours was up"
    );

    let revived: SocketAddr = local[0].addr;
    let killed_at = Instant::now();
    for s in local {
        s.kill();
    }
    let t = Instant::now();
    while other_hits() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "no call reached the other zone within 2 s of the kill: {:?}",
            channel.pool()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let moved = killed_at.elapsed();
    // Steady load on the other zone for a while, the dead servers still
    // listed by the registry.
    let at_move = other_hits();
    eventually(
        Duration::from_secs(20),
        "the other zone serves 300 calls",
        || other_hits() >= at_move + 300,
    )
    .await;

    let back = TestServer::start_on(revived, Behaviour::default());
    let restarted = Instant::now();
    // The endpoint's ejection grows while it is dead (100 ms doubling up to
    // 10 s); the probe that ends it re-admits the revived server.
    eventually(
        Duration::from_secs(15),
        "the revived local server takes calls",
        || back.hits() > 0,
    )
    .await;
    let home = restarted.elapsed();
    let (ok, failed) = load.finish().await;

    // Home again: with a local endpoint answering, none goes elsewhere.
    let mut client = GreeterClient::new(channel.clone());
    let mut in_a_row = 0;
    let t = Instant::now();
    while in_a_row < 50 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "calls still leave the zone: {:?}",
            channel.pool()
        );
        if served_by(&mut client).await == Some(revived.to_string()) {
            in_a_row += 1;
        } else {
            in_a_row = 0;
        }
    }
    let pool = channel.pool();
    println!(
        "{kind:?}: both local servers killed: {} calls, {} failed; first call on the other zone \
         {moved:?} after the kill; the revived local server took calls {home:?} after it \
         listened; hedged {}, retried {}",
        ok + failed.len(),
        failed.len(),
        pool.hedged_calls,
        pool.retried_calls
    );
    assert!(failed.is_empty(), "failed calls: {failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_killed_local_zone_fails_over_at_once_and_comes_home() {
    kill_the_local_zone(BalancerKind::P2c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrr_killed_local_zone_fails_over_at_once_and_comes_home() {
    kill_the_local_zone(BalancerKind::Wrr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_zone_that_never_answers_does_not_stop_calls() {
    // Listed, never dialable: the first dials fail and calls use the other
    // zone, for any method.
    let other = TestServer::start(Behaviour::default());
    let (resolver, _tx) = fake(found_in(&[
        (LOCAL, &[ep(dead_addr()), ep(dead_addr())]),
        (OTHER, &[ep(other.addr)]),
    ]));
    let config = ClientConfig::default()
        .zone(LOCAL)
        .timeout(Duration::from_secs(1));
    let channel = Balanced::new(resolver, &config).unwrap();
    channel.connect().await.expect("the other zone connects");
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..50 {
        let by = served_by(&mut client).await;
        assert_eq!(by, Some(other.addr.to_string()), "{:?}", channel.pool());
    }
}
