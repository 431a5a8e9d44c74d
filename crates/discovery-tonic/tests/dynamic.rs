//! A backend that turns slow or starts failing loses its share of calls
//! within a few seconds and gets it back once it recovers, under p2c and
//! under wrr with dynamic weights. The shares per second are printed.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, BalancerKind, ClientConfig};
use support::{Behaviour, TestServer, ep, fake, found, hello, wait_ready};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Slow,
    Failing,
}

/// Phases: 3 s healthy, 5 s faulty, 6 s recovered. Returns the victim's
/// share of the calls per second.
async fn shares(kind: BalancerKind, fault: Fault) -> Vec<f64> {
    let servers: Vec<TestServer> = (0..3)
        .map(|_| TestServer::start(Behaviour::default()))
        .collect();
    let (resolver, _tx) = fake(found(
        &servers.iter().map(|s| ep(s.addr)).collect::<Vec<_>>(),
    ));
    let channel = Balanced::new(resolver, &ClientConfig::default().balancer(kind)).unwrap();
    wait_ready(&channel, 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let stop = stop.clone();
        let mut client = GreeterClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let _ = client.say_hello(hello()).await;
                // Fixed: paces the load.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let victim = &servers[0].control;
    let mut series = Vec::new();
    let mut last: Vec<usize> = servers.iter().map(TestServer::hits).collect();
    let start = Instant::now();
    for second in 1..=14 {
        match second {
            4 => match fault {
                Fault::Slow => victim.set_delay(Duration::from_millis(30)),
                Fault::Failing => victim.set_fail(true),
            },
            9 => {
                victim.set_delay(Duration::ZERO);
                victim.set_fail(false);
            }
            _ => {}
        }
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        let now: Vec<usize> = servers.iter().map(TestServer::hits).collect();
        let delta: Vec<usize> = now.iter().zip(&last).map(|(a, b)| a - b).collect();
        let total: usize = delta.iter().sum();
        series.push(delta[0] as f64 / total.max(1) as f64);
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let text: Vec<String> = series
        .iter()
        .map(|s| format!("{:.0}%", s * 100.0))
        .collect();
    println!(
        "{kind:?} {fault:?}: victim's share per second (healthy 1-3, {fault:?} 4-8, recovered \
         9-14): {}",
        text.join(" ")
    );
    series
}

fn check(series: &[f64]) {
    let healthy = series[..3].iter().sum::<f64>() / 3.0;
    let faulty = series[5..8].iter().sum::<f64>() / 3.0;
    let recovered = series[11..14].iter().sum::<f64>() / 3.0;
    assert!(healthy > 0.2, "healthy share {healthy}: {series:?}");
    assert!(
        faulty < healthy * 0.6,
        "faulty share {faulty} vs {healthy}: {series:?}"
    );
    assert!(
        recovered > healthy / 2.0,
        "recovered share {recovered} vs {healthy}: {series:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_slow_backend_loses_and_regains_its_share() {
    check(&shares(BalancerKind::P2c, Fault::Slow).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrr_slow_backend_loses_and_regains_its_share() {
    check(&shares(BalancerKind::Wrr, Fault::Slow).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_failing_backend_loses_and_regains_its_share() {
    check(&shares(BalancerKind::P2c, Fault::Failing).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrr_failing_backend_loses_and_regains_its_share() {
    check(&shares(BalancerKind::Wrr, Fault::Failing).await);
}
