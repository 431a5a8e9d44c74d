//! Per-RPC deadlines.

mod support;

use std::time::Duration;

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, ClientConfig};
use support::{Behaviour, TestServer, ep, fake, found, hello, wait_ready};
use tokio::time::Instant;
use tonic::Code;

fn slow() -> Behaviour {
    Behaviour {
        delay: Duration::from_secs(1),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_hits_the_default_250ms() {
    let server = TestServer::start(slow());
    let (resolver, _tx) = fake(found(&[ep(server.addr)]));
    let channel = Balanced::new(resolver, &ClientConfig::default()).unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel);
    let t = Instant::now();
    let err = client.say_hello(hello()).await.unwrap_err();
    let took = t.elapsed();
    println!(
        "1 s handler under the default timeout: {:?} after {took:?}",
        err.code()
    );
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // Loose bounds: never early, well before the handler's second.
    assert!(
        took >= Duration::from_millis(245) && took < Duration::from_secs(1),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_and_method_deadlines_win_when_shorter() {
    let server = TestServer::start(slow());
    let (resolver, _tx) = fake(found(&[ep(server.addr)]));
    let config = ClientConfig::default()
        .method_timeout("/helloworld.Greeter/SayHello", Duration::from_millis(100));
    let channel = Balanced::new(resolver, &config).unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());

    let t = Instant::now();
    let err = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(
        t.elapsed() < Duration::from_millis(245),
        "{:?}",
        t.elapsed()
    );

    let mut req = tonic::Request::new(hello());
    req.set_timeout(Duration::from_millis(30));
    let t = Instant::now();
    let err = client.say_hello(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(t.elapsed() < Duration::from_millis(95), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longer_method_deadline_lets_the_call_finish() {
    let server = TestServer::start(slow());
    let (resolver, _tx) = fake(found(&[ep(server.addr)]));
    let config = ClientConfig::default()
        .method_timeout("/helloworld.Greeter/SayHello", Duration::from_secs(5));
    let channel = Balanced::new(resolver, &config).unwrap();
    let mut client = GreeterClient::new(channel);
    client
        .say_hello(hello())
        .await
        .expect("a 1 s call under a 5 s deadline");
}
