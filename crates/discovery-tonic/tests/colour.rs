//! Colour routing.

mod support;

use demo_proto::helloworld::greeter_client::GreeterClient;
use discovery_tonic::{Balanced, ClientConfig};
use support::{Behaviour, Ep, TestServer, ep, fake, found, hello, wait_ready};

fn red_request() -> tonic::Request<demo_proto::helloworld::HelloRequest> {
    let mut req = tonic::Request::new(hello());
    req.metadata_mut().insert("color", "red".parse().unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_goes_to_red_and_plain_never_does() {
    let plain = TestServer::start(Behaviour::default());
    let red = TestServer::start(Behaviour::default());
    let eps = [
        ep(plain.addr),
        Ep {
            addr: red.addr,
            weight: 10,
            color: "red",
        },
    ];
    let (resolver, _tx) = fake(found(&eps));
    let channel = Balanced::new(resolver, &ClientConfig::default()).unwrap();
    wait_ready(&channel, 2).await;
    let mut client = GreeterClient::new(channel);
    for _ in 0..50 {
        client.say_hello(red_request()).await.unwrap();
    }
    assert_eq!((plain.hits(), red.hits()), (0, 50));
    for _ in 0..50 {
        client.say_hello(hello()).await.unwrap();
    }
    assert_eq!((plain.hits(), red.hits()), (50, 50));
    // An unknown colour uses the main set.
    let mut req = tonic::Request::new(hello());
    req.metadata_mut().insert("color", "blue".parse().unwrap());
    client.say_hello(req).await.unwrap();
    assert_eq!(plain.hits(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_without_red_backends_uses_the_main_set_and_config_colour_applies() {
    let plain = TestServer::start(Behaviour::default());
    let red = TestServer::start(Behaviour::default());
    let (resolver, tx) = fake(found(&[ep(plain.addr)]));
    let channel = Balanced::new(resolver, &ClientConfig::default().color("red")).unwrap();
    wait_ready(&channel, 1).await;
    let mut client = GreeterClient::new(channel.clone());
    client.say_hello(hello()).await.unwrap();
    assert_eq!(plain.hits(), 1);
    // The client's own colour (DEPLOY_COLOR) routes plain requests to red
    // once a red backend exists.
    tx.send_replace(found(&[
        ep(plain.addr),
        Ep {
            addr: red.addr,
            weight: 10,
            color: "red",
        },
    ]));
    wait_ready(&channel, 2).await;
    for _ in 0..10 {
        client.say_hello(hello()).await.unwrap();
    }
    assert_eq!((plain.hits(), red.hits()), (1, 10));
}
