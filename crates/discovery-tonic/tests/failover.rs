//! Endpoints dying and coming back under load.

mod support;

use std::time::Duration;

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, BalancerKind, ClientConfig};
use support::{Behaviour, TestServer, dead_addr, ep, fake, found, hello, wait_ready};
use tokio::time::Instant;

/// Four servers, one killed (listener and connections) mid-test, registry
/// not told: after the first failures eject it, calls keep succeeding.
async fn kill_one_of_four(kind: BalancerKind) -> (usize, usize) {
    let servers: Vec<TestServer> = (0..4)
        .map(|_| TestServer::start(Behaviour::default()))
        .collect();
    let (resolver, _tx) = fake(found(
        &servers.iter().map(|s| ep(s.addr)).collect::<Vec<_>>(),
    ));
    let config = ClientConfig::default()
        .balancer(kind)
        .timeout(Duration::from_secs(2));
    let channel = Balanced::new(resolver, &config).unwrap();
    wait_ready(&channel, 4).await;
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..100 {
        client.say_hello(hello()).await.expect("all four up");
    }
    // Kill the server the picker favours most, so that it is certain to be
    // picked after the kill (p2c may otherwise starve one endpoint for up to
    // its 3 s force gap and never notice the death within the test).
    let mut servers = servers;
    let favourite = (0..servers.len())
        .max_by_key(|&i| servers[i].hits())
        .unwrap();
    let victim = servers.remove(favourite);
    let victim_addr = victim.addr;
    victim.kill();
    let before: usize = servers.iter().map(TestServer::hits).sum();
    let mut failed = 0;
    let calls = 1000;
    for _ in 0..calls {
        if let Err(status) = client.say_hello(hello()).await {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(
                status.message().contains(&victim_addr.to_string()),
                "{status:?}"
            );
            failed += 1;
        }
    }
    assert!(
        channel
            .ejected_endpoints()
            .contains(&victim_addr.to_string()),
        "{failed} failed; ejected {:?}; ready {:?}",
        channel.ejected_endpoints(),
        channel.ready_endpoints()
    );
    let served = servers.iter().map(TestServer::hits).sum::<usize>() - before;
    assert_eq!(
        served,
        calls - failed,
        "the survivors served every other call"
    );
    (failed, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_kill_one_of_four() {
    let (failed, calls) = kill_one_of_four(BalancerKind::P2c).await;
    let pct = failed as f64 * 100.0 / calls as f64;
    println!("p2c: {failed} of {calls} calls failed after the kill ({pct:.2} %)");
    assert!(pct < 0.5, "{pct} %");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrr_kill_one_of_four() {
    let (failed, calls) = kill_one_of_four(BalancerKind::Wrr).await;
    let pct = failed as f64 * 100.0 / calls as f64;
    println!("wrr: {failed} of {calls} calls failed after the kill ({pct:.2} %)");
    assert!(pct < 0.5, "{pct} %");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_accepting_address_gets_no_call() {
    let up = [
        TestServer::start(Behaviour::default()),
        TestServer::start(Behaviour::default()),
    ];
    let dead = dead_addr();
    let (resolver, _tx) = fake(found(&[ep(up[0].addr), ep(dead), ep(up[1].addr)]));
    let channel = Balanced::new(resolver, &ClientConfig::default()).unwrap();
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..300 {
        client
            .say_hello(hello())
            .await
            .expect("the dead address is never picked");
    }
    assert_eq!(channel.ready_endpoints().len(), 2);
    assert!(!channel.ready_endpoints().contains(&dead.to_string()));
    assert_eq!(up[0].hits() + up[1].hits(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_server_gets_traffic_again() {
    // Within 11 s (one maximal ejection plus a probe).
    let a = TestServer::start(Behaviour::default());
    let b = TestServer::start(Behaviour::default());
    let b_addr = b.addr;
    let (resolver, _tx) = fake(found(&[ep(a.addr), ep(b.addr)]));
    let channel = Balanced::new(resolver, &ClientConfig::default()).unwrap();
    wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(channel.clone());
    b.kill();
    let mut failed = 0;
    for _ in 0..200 {
        if client.say_hello(hello()).await.is_err() {
            failed += 1;
        }
    }
    assert!(failed <= 2, "{failed} failures");
    assert_eq!(channel.ejected_endpoints(), [b_addr.to_string()]);
    let b = TestServer::start_on(b_addr, Behaviour::default());
    let t = Instant::now();
    while b.hits() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(11),
            "no traffic to the restarted server"
        );
        let _ = client.say_hello(hello()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("restarted server got traffic after {:?}", t.elapsed());
    assert!(channel.ejected_endpoints().is_empty());
}
