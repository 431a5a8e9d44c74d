//! Smooth weighted round robin over real servers.

mod support;

use std::sync::Arc;

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{
    Balanced, BalancerKind, ClientConfig,
    picker::{Endpoint, PickContext, Picker, SmoothWrr},
};
use support::{Behaviour, Ep, TestServer, fake, found, hello, wait_ready};

#[test]
fn nginx_sequence() {
    let eps: Vec<Arc<Endpoint>> = [("a", 5), ("b", 1), ("c", 1)]
        .into_iter()
        .map(|(a, w)| Arc::new(Endpoint::new(a, w, None)))
        .collect();
    let wrr = SmoothWrr::new();
    let ctx = PickContext::now("/m");
    let seq: Vec<&str> = (0..14)
        .map(|_| eps[wrr.pick(&ctx, &eps).unwrap()].addr())
        .collect();
    assert_eq!(seq.concat(), "aabacaaaabacaa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_1_2_3_over_600_calls() {
    let servers: Vec<TestServer> = (0..3)
        .map(|_| TestServer::start(Behaviour::default()))
        .collect();
    let eps: Vec<Ep> = servers
        .iter()
        .zip([1, 2, 3])
        .map(|(s, weight)| Ep {
            addr: s.addr,
            weight,
            color: "",
        })
        .collect();
    let (resolver, _tx) = fake(found(&eps));
    let channel = Balanced::new(
        resolver,
        &ClientConfig::default()
            .balancer(BalancerKind::Wrr)
            .static_weights(true),
    )
    .unwrap();
    wait_ready(&channel, 3).await;
    let mut client = GreeterClient::new(channel);
    for _ in 0..600 {
        client.say_hello(hello()).await.unwrap();
    }
    let hits: Vec<usize> = servers.iter().map(TestServer::hits).collect();
    println!("wrr 1:2:3 over 600 calls: {hits:?}");
    assert_eq!(hits, [100, 200, 300]);
}
