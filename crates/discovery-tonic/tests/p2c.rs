//! P2c over real servers: latency and `cpu_usage` steer traffic.

mod support;

use std::time::Duration;

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, ClientConfig};
use support::{Behaviour, TestServer, ep, fake, found, hello, wait_ready};

async fn run(a: Behaviour, b: Behaviour, calls: usize) -> (usize, usize) {
    let fast = TestServer::start(a);
    let slow = TestServer::start(b);
    let (resolver, _tx) = fake(found(&[ep(fast.addr), ep(slow.addr)]));
    let channel = Balanced::new(resolver, &ClientConfig::default()).unwrap();
    wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(channel);
    for _ in 0..calls {
        client.say_hello(hello()).await.unwrap();
    }
    (fast.hits(), slow.hits())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefers_the_fast_server() {
    let slow = Behaviour {
        delay: Duration::from_millis(50),
        ..Default::default()
    };
    let (fast, slow) = run(Behaviour::default(), slow, 300).await;
    let share = slow as f64 / (fast + slow) as f64;
    println!(
        "p2c fast vs +50 ms: {fast} / {slow} ({:.1} % to the slow one)",
        share * 100.0
    );
    assert!(share < 0.1, "{share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefers_the_low_cpu_server() {
    let low = Behaviour {
        cpu: Some(100),
        ..Default::default()
    };
    let high = Behaviour {
        cpu: Some(950),
        ..Default::default()
    };
    let (low, high) = run(low, high, 600).await;
    let share = high as f64 / (low + high) as f64;
    println!(
        "p2c cpu 100 vs 950: {low} / {high} ({:.1} % to the busy one)",
        share * 100.0
    );
    assert!(share < 0.1, "{share}");
}
