//! More than 1024 endpoints: tonic's `balance_list` panics
//! there; ours builds, connects and balances.

mod support;

use std::{collections::BTreeSet, time::Duration};

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, ClientConfig};
use support::{Behaviour, TestServer, ep, fake, found, hello, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_over_1025_endpoints() {
    const N: usize = 1025;
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let server = TestServer::serve(listeners, addrs[0], Behaviour::default());
    let (resolver, _tx) = fake(found(&addrs.iter().map(|a| ep(*a)).collect::<Vec<_>>()));
    // Subset 0: balance over every endpoint, not the default 50.
    let config = ClientConfig::default()
        .timeout(Duration::from_secs(5))
        .subset(0);
    let channel = Balanced::new(resolver, &config).unwrap();
    let t = tokio::time::Instant::now();
    wait_ready(&channel, N).await;
    println!("{N} endpoints connected in {:?}", t.elapsed());
    let mut client = GreeterClient::new(channel.clone());
    for _ in 0..2000 {
        client.say_hello(hello()).await.unwrap();
    }
    assert_eq!(server.hits(), 2000);
    assert_eq!(channel.ready_endpoints().len(), N);
    let distinct: BTreeSet<_> = channel.ready_endpoints().into_iter().collect();
    assert_eq!(distinct.len(), N);
}
