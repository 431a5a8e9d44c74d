//! Resolver updates while calls run.

mod support;

use std::time::Duration;

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, BalancerKind, ClientConfig};
use support::{Behaviour, TestServer, ep, eventually, fake, found, hello, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_backend_mid_call_lets_the_call_finish() {
    let slow = TestServer::start(Behaviour {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let other = TestServer::start(Behaviour::default());
    let (resolver, tx) = fake(found(&[ep(slow.addr)]));
    let config = ClientConfig::default().timeout(Duration::from_secs(2));
    let channel = Balanced::new(resolver, &config).unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());
    let call = tokio::spawn(async move { client.say_hello(hello()).await });
    eventually(Duration::from_secs(2), "the call in flight", || {
        slow.hits() == 1
    })
    .await;
    tx.send_replace(found(&[ep(other.addr)]));
    eventually(
        Duration::from_secs(2),
        "only the other backend ready",
        || channel.ready_endpoints() == [other.addr.to_string()],
    )
    .await;
    let reply = call.await.unwrap().expect("the in-flight call completes");
    assert_eq!(
        reply.metadata().get("x-served-by").unwrap(),
        &slow.addr.to_string()
    );
    // New calls go to the remaining backend only.
    let mut client = GreeterClient::new(channel);
    for _ in 0..10 {
        client.say_hello(hello()).await.unwrap();
    }
    assert_eq!((slow.hits(), other.hits()), (1, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_backends_get_traffic_and_weights_update_in_place() {
    let a = TestServer::start(Behaviour::default());
    let b = TestServer::start(Behaviour::default());
    let (resolver, tx) = fake(found(&[ep(a.addr)]));
    let channel = Balanced::new(
        resolver,
        &ClientConfig::default().balancer(BalancerKind::Wrr),
    )
    .unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());
    client.say_hello(hello()).await.unwrap();
    let mut heavy_b = ep(b.addr);
    heavy_b.weight = 30;
    tx.send_replace(found(&[ep(a.addr), heavy_b]));
    wait_ready(&channel, 2).await;
    for _ in 0..40 {
        client.say_hello(hello()).await.unwrap();
    }
    assert_eq!((a.hits(), b.hits()), (11, 30));
}
